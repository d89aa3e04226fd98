#!/usr/bin/env bash
# TLS: certificates made here with certtool (as qemu's tests/qemu-iotests/common.tls does: one
# CA, a server certificate for localhost, a client certificate), laid out as qemu's
# tls-creds-x509 expects (ca-cert.pem, server-cert.pem, server-key.pem / client-*.pem). The
# server runs with --object tls-creds-x509,...,endpoint=server --tls-creds tls0. TLS clients:
# qemu-img and qemu-io with a client tls-creds object, nbdinfo and nbdcopy with nbds+unix URIs.
# Refused: a plaintext client (nbdinfo, and a raw OPT_GO that must get NBD_REP_ERR_TLS_REQD)
# and a client trusting another CA.
#
# Usage: tls.sh [SERVER]   (default $VD_NBD, else qemu-nbd)
. "$(dirname "$0")/lib.sh"
for tool in certtool nbdinfo nbdcopy; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done

# make_ca DIR NAME: a CA key and self-signed certificate.
make_ca() {
  mkdir -p "$1"
  certtool --generate-privkey --key-type=ecdsa --outfile "$1/ca-key.pem" 2>/dev/null
  printf 'cn = %s\nca\ncert_signing_key\nexpiration_days = 2\n' "$2" >"$1/ca.info"
  certtool --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" \
    --outfile "$1/ca-cert.pem" 2>/dev/null
}
# make_cert CA_DIR OUT_DIR server|client
make_cert() {
  local ca="$1" out="$2" role="$3"
  mkdir -p "$out"
  cp "$ca/ca-cert.pem" "$out/ca-cert.pem"
  certtool --generate-privkey --key-type=ecdsa --outfile "$out/$role-key.pem" 2>/dev/null
  if [ "$role" = server ]; then
    printf 'organization = vd tests\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\nip_address = ::1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$out/$role.info"
  else
    printf 'organization = vd tests\ncn = vd-nbd test client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$out/$role.info"
  fi
  certtool --generate-certificate --load-ca-privkey "$ca/ca-key.pem" --load-ca-certificate "$ca/ca-cert.pem" \
    --load-privkey "$out/$role-key.pem" --template "$out/$role.info" --outfile "$out/$role-cert.pem" 2>/dev/null
}
make_ca "$WORK/ca" "vd test CA"
make_cert "$WORK/ca" "$WORK/server" server
make_cert "$WORK/ca" "$WORK/client" client
make_ca "$WORK/otherca" "another CA"
make_cert "$WORK/otherca" "$WORK/stranger" client

qemu-img create -q -f qcow2 "$WORK/base.qcow2" 4M
qio -f qcow2 -c 'write -P 0x11 0 1M' "$WORK/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$WORK/top.qcow2"

start_server tls "$SERVER" -e 3 -x secure -f qcow2 \
  --object "tls-creds-x509,id=tls0,endpoint=server,dir=$WORK/server" --tls-creds tls0 "$WORK/top.qcow2"
s="$(sock tls)"
client_obj="tls-creds-x509,id=tls0,endpoint=client,dir=$WORK/client"
opts="driver=nbd,server.type=unix,server.path=$s,export=secure,tls-creds=tls0,tls-hostname=localhost"

info="$(timeout 60 qemu-img info --object "$client_obj" --image-opts "$opts" 2>&1)" || true
if grep -q 'virtual size: 4 MiB' <<<"$info"; then pass "qemu-img info over TLS"; else fail "qemu-img info over TLS: $info"; fi
check "qemu-io over TLS: read, write, read back" timeout 60 qemu-io --object "$client_obj" --image-opts "$opts" \
  -c 'read -P 0x11 0 1M' -c 'write -P 0x22 1M 64k' -c 'flush' -c 'read -P 0x22 1M 64k'
tu="nbds+unix:///secure?socket=$s&tls-certificates=$WORK/client"
tlsinfo="$(timeout 30 nbdinfo "$tu" 2>&1)" || true
if grep -q 'protocol: newstyle-fixed with TLS' <<<"$tlsinfo"; then pass "nbdinfo over TLS"; else fail "nbdinfo over TLS: $tlsinfo"; fi
check "nbdcopy over TLS" timeout 60 nbdcopy "$tu" "$WORK/copy.raw"
check "nbdcopy's data is the disk's" qemu-img compare -U -f raw -F qcow2 "$WORK/copy.raw" "$WORK/top.qcow2"

check_fails "plaintext nbdinfo refused" timeout 30 nbdinfo "nbd+unix:///secure?socket=$s"
check_fails "plaintext qemu-img refused" timeout 30 qemu-img info "nbd+unix:///secure?socket=$s"
check_fails "a client trusting another CA is refused" timeout 30 nbdinfo \
  "nbds+unix:///secure?socket=$s&tls-certificates=$WORK/stranger"
check_fails "qemu-img trusting another CA is refused" timeout 30 qemu-img info \
  --object "tls-creds-x509,id=tls0,endpoint=client,dir=$WORK/stranger" --image-opts "$opts"
check "a raw OPT_GO without STARTTLS gets NBD_REP_ERR_TLS_REQD" timeout 30 /usr/bin/python3 -c '
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
def rx(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: sys.exit("server closed instead of answering")
        b += c
    return b
assert rx(18)[:8] == b"NBDMAGIC"
s.sendall(struct.pack(">I", 3))
name = b"secure"
s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 4 + len(name) + 2) + struct.pack(">I", len(name)) + name + b"\0\0")
magic, opt, rtype, length = struct.unpack(">QIII", rx(20))
rx(length)
assert rtype == 0x80000005, "reply %#x, want NBD_REP_ERR_TLS_REQD" % rtype
' "$s"
server_alive tls && pass "server alive" || fail "server died"
stop_server tls
check "qemu-img check clean" qemu-img check -q "$WORK/top.qcow2"
check "TLS write landed" qio -f qcow2 -c 'read -P 0x22 1M 64k' -c 'read -P 0x11 0 1M' "$WORK/top.qcow2"

finish
