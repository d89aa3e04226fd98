#!/usr/bin/env bash
# make-tls-certs.sh DIR: a CA, a server and a client certificate in DIR, laid out for both
# QEMU's tls-creds-x509 (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
# client-key.pem) and libnbd's tls-certificates= (the same names). As QEMU's
# tests/qemu-iotests/common.tls does it: one key for all, certtool from gnutls-bin.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
certtool --generate-privkey --key-type=rsa --bits=2048 --outfile key.pem >/dev/null 2>&1
cat > ca.info <<'INFO'
cn = vd test CA
ca
cert_signing_key
INFO
certtool --generate-self-signed --load-privkey key.pem --template ca.info --outfile ca-cert.pem >/dev/null 2>&1
cat > server.info <<'INFO'
organization = vd test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
INFO
certtool --generate-certificate --load-ca-privkey key.pem --load-ca-certificate ca-cert.pem \
  --load-privkey key.pem --template server.info --outfile server-cert.pem >/dev/null 2>&1
cat > client.info <<'INFO'
country = GB
organization = vd test
cn = vd client
tls_www_client
encryption_key
signing_key
INFO
certtool --generate-certificate --load-ca-privkey key.pem --load-ca-certificate ca-cert.pem \
  --load-privkey key.pem --template client.info --outfile client-cert.pem >/dev/null 2>&1
cp key.pem server-key.pem
cp key.pem client-key.pem
rm -f ca.info server.info client.info
