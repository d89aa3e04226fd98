// Parsing vd-nbd's command line with getopt_long, as qemu-nbd does, so that scripts written
// for qemu-nbd run unchanged. Beyond qemu-nbd: several exports, each image preceded by its
// own -x NAME (and -D TEXT): `vd-nbd -x a A.qcow2 -x b B.qcow2`. With one image, -x and -D
// may come anywhere (qemu-nbd's order-free syntax).
#include "host/vd-nbd/options.h"

#include <getopt.h>

#include <cstdlib>
#include <map>
#include <set>

namespace vdnbd {

const char* const kUsage =
    "Usage: vd-nbd [OPTIONS] FILE\n"
    "  or:  vd-nbd [OPTIONS] -x NAME FILE [-x NAME FILE]...\n"
    "Serve vd disks (QCOW2, QCOW, LUKS, raw; backing chains) over NBD\n"
    "\n"
    "  -h, --help                display this help and exit\n"
    "  -V, --version             output version information and exit\n"
    "\n"
    "Connection properties:\n"
    "  -p, --port=PORT           port to listen on (default `10809')\n"
    "  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
    "  -k, --socket=PATH         path to the unix socket\n"
    "  -e, --shared=NUM          device can be shared by NUM clients (default '1', 0: no limit)\n"
    "  -t, --persistent          don't exit on the last connection\n"
    "  -x, --export-name=NAME    expose export by name (default is empty string);\n"
    "                            before each FILE when serving several\n"
    "  -D, --description=TEXT    export a human-readable description\n"
    "      --handshake-limit=N   seconds a client may take to negotiate (default 10)\n"
    "\n"
    "Exposing part of the image:\n"
    "  -A, --allocation-depth    expose the allocation depth (qemu:allocation-depth)\n"
    "  -B, --bitmap=NAME         expose a persistent dirty bitmap (qemu:dirty-bitmap:NAME);\n"
    "                            may repeat\n"
    "\n"
    "General purpose options:\n"
    "  --object type,id=ID,...   tls-creds-x509,id=ID,endpoint=server,dir=DIR[,verify-peer=on|off]\n"
    "                            (secret objects are accepted and ignored)\n"
    "  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
    "  --fork                    fork off the server process and exit the parent\n"
    "                            once the server is running\n"
    "  --pid-file=PATH           store the server's process ID in the given file\n"
    "\n"
    "Block device options:\n"
    "  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
    "  -r, --read-only           export read-only\n"
    "  -l, --load-snapshot=SNAPSHOT_PARAM\n"
    "                            export an internal snapshot, read-only: '[ID_OR_NAME]',\n"
    "                            'snapshot.id=[ID]' or 'snapshot.name=[NAME]'\n"
    "  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
    "                            file with backing_file=FILE, redirect the write to\n"
    "                            the temporary one\n"
    "  -U, --force-share         open read-only images even while another process writes them\n"
    "      --passphrase-file=FILE  the passphrase of an encrypted image\n"
    "  -n, --nocache             disable host cache (--cache=none)\n"
    "      --cache=MODE          host cache mode of every image of the chain: 'none'\n"
    "                            (O_DIRECT), 'writeback' (default), 'writethrough',\n"
    "                            'directsync' and 'unsafe'\n"
    "      --aio=MODE            I/O engine: 'threads' (default) or 'io_uring'\n"
    "      --discard=MODE        'ignore' (default: trims succeed and change nothing,\n"
    "                            zeroes keep their space) or 'unmap' (trims and\n"
    "                            zeroes free space)\n"
    "      --detect-zeroes=MODE  'off' (default), 'on' (writes of zeros become zero\n"
    "                            writes), 'unmap' (and free space; needs --discard=unmap)\n";

namespace {

enum LongOnly { kObject = 256, kTlsCreds, kFork, kPidFile, kPassphraseFile, kHandshakeLimit, kTlsAuthz, kCache, kAio, kDiscard, kDetectZeroes };

vd::Error bad(std::string msg) { return vd::Error(vd::Errc::invalid_argument, std::move(msg)); }

// "a=b,c=d" with ",," standing for a literal comma, as QEMU's option parser reads it.
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ',' && i + 1 < s.size() && s[i + 1] == ',') {
      out.back() += ',';
      ++i;
    } else if (s[i] == ',') {
      out.emplace_back();
    } else {
      out.back() += s[i];
    }
  }
  return out;
}

struct TlsObject {
  std::string dir;
  bool verify_peer = true;
};

vd::Error parse_object(const std::string& text, std::map<std::string, TlsObject>& tls) {
  auto parts = split_commas(text);
  std::string type = parts[0];
  std::map<std::string, std::string> kv;
  for (size_t i = 1; i < parts.size(); ++i) {
    auto eq = parts[i].find('=');
    if (eq == std::string::npos) return bad("Invalid parameter '" + parts[i] + "'");
    kv[parts[i].substr(0, eq)] = parts[i].substr(eq + 1);
  }
  if (type.starts_with("qom-type=")) type = type.substr(9);
  if (!kv.count("id")) return bad("Parameter 'id' is missing");
  if (type == "secret") return {};
  if (type != "tls-creds-x509") return bad("invalid object type: " + type);
  if (kv.count("endpoint") && kv["endpoint"] != "server") {
    return bad("Expecting TLS credentials with a server endpoint");
  }
  TlsObject t;
  t.dir = kv.count("dir") ? kv["dir"] : "";
  if (t.dir.empty()) return bad("tls-creds-x509 object '" + kv["id"] + "' needs dir=");
  if (kv.count("verify-peer")) {
    const std::string& v = kv["verify-peer"];
    if (v == "on" || v == "yes" || v == "true") t.verify_peer = true;
    else if (v == "off" || v == "no" || v == "false") t.verify_peer = false;
    else return bad("Parameter 'verify-peer' expects 'on' or 'off'");
  }
  tls[kv["id"]] = t;
  return {};
}

vd::Result<unsigned long> number(const char* arg, const char* what, unsigned long max) {
  char* end = nullptr;
  errno = 0;
  unsigned long v = std::strtoul(arg, &end, 0);
  if (!*arg || *end || errno || v > max || arg[0] == '-') return bad(std::string("Invalid ") + what + " '" + arg + "'");
  return v;
}

}  // namespace

vd::Result<Options> parse_options(int argc, char** argv) {
  static const option longopts[] = {
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {"port", required_argument, nullptr, 'p'},
      {"bind", required_argument, nullptr, 'b'},
      {"socket", required_argument, nullptr, 'k'},
      {"shared", required_argument, nullptr, 'e'},
      {"persistent", no_argument, nullptr, 't'},
      {"verbose", no_argument, nullptr, 'v'},
      {"export-name", required_argument, nullptr, 'x'},
      {"description", required_argument, nullptr, 'D'},
      {"allocation-depth", no_argument, nullptr, 'A'},
      {"bitmap", required_argument, nullptr, 'B'},
      {"format", required_argument, nullptr, 'f'},
      {"read-only", no_argument, nullptr, 'r'},
      {"load-snapshot", required_argument, nullptr, 'l'},
      {"force-share", no_argument, nullptr, 'U'},
      {"snapshot", no_argument, nullptr, 's'},
      {"object", required_argument, nullptr, kObject},
      {"tls-creds", required_argument, nullptr, kTlsCreds},
      {"tls-authz", required_argument, nullptr, kTlsAuthz},
      {"fork", no_argument, nullptr, kFork},
      {"pid-file", required_argument, nullptr, kPidFile},
      {"passphrase-file", required_argument, nullptr, kPassphraseFile},
      {"handshake-limit", required_argument, nullptr, kHandshakeLimit},
      {"cache", required_argument, nullptr, kCache},
      {"aio", required_argument, nullptr, kAio},
      {"nocache", no_argument, nullptr, 'n'},
      {"discard", required_argument, nullptr, kDiscard},
      {"detect-zeroes", required_argument, nullptr, kDetectZeroes},
      {nullptr, 0, nullptr, 0},
  };
  Options o;
  std::map<std::string, TlsObject> tls_objects;
  std::optional<std::string> tls_creds;
  std::optional<std::string> pending_name, pending_desc;
  bool seen_cache = false, seen_aio = false, seen_discard = false, native_aio = false;
  std::vector<std::pair<std::optional<std::string>, std::optional<std::string>>> names;  // per image
  optind = 1;
  opterr = 0;
  int c;
  // "-": positional arguments come back in order as option 1, so -x binds to the next FILE.
  while ((c = getopt_long(argc, argv, "-hVp:b:k:e:tvx:D:AB:f:rl:Usn", longopts, nullptr)) != -1) {
    switch (c) {
      case 1:
        o.images.push_back({optarg, "", ""});
        names.emplace_back(pending_name, pending_desc);
        pending_name.reset();
        pending_desc.reset();
        break;
      case 'h': o.help = true; break;
      case 'V': o.version = true; break;
      case 'p': {
        auto v = number(optarg, "port", 65535);
        if (!v) return v.error();
        o.port = static_cast<uint16_t>(*v);
        break;
      }
      case 'b': o.bind = optarg; break;
      case 'k': o.socket = optarg; break;
      case 'e': {
        auto v = number(optarg, "shared device number", 1u << 30);
        if (!v) return v.error();
        o.shared = static_cast<unsigned>(*v);
        break;
      }
      case 't': o.persistent = true; break;
      case 'v': break;
      case 'x': pending_name = optarg; break;
      case 'D': pending_desc = optarg; break;
      case 'A': o.allocation_depth = true; break;
      case 'B': o.bitmaps.push_back(optarg); break;
      case 'f': o.format = optarg; break;
      case 'r': o.read_only = true; break;
      case 'l': {
        std::string s = optarg;
        if (s.starts_with("snapshot.id=")) s = s.substr(12);
        else if (s.starts_with("snapshot.name=")) s = s.substr(14);
        o.snapshot = s;
        o.read_only = true;
        break;
      }
      case 'U': o.force_share = true; break;
      case 's': o.snapshot_overlay = true; break;
      case kObject:
        if (vd::Error e = parse_object(optarg, tls_objects)) return e;
        break;
      case kTlsCreds: tls_creds = optarg; break;
      case kTlsAuthz: return vd::Error(vd::Errc::not_supported, "--tls-authz is not supported");
      case 'n':
      case kCache: {
        if (seen_cache) return bad("-n and --cache can only be specified once");
        seen_cache = true;
        if (c == 'n') {
          o.cache = vd::CacheMode::none;
          break;
        }
        auto mode = vd::parse_cache_mode(optarg);
        if (!mode) return bad(std::string("Invalid cache mode `") + optarg + "'");
        o.cache = *mode;
        break;
      }
      case kAio: {
        if (seen_aio) return bad("--aio can only be specified once");
        seen_aio = true;
        std::string v = optarg;
        if (v == "native") native_aio = true;
        else if (auto a = vd::parse_aio(v)) o.aio = *a;
        else return bad("Invalid aio mode '" + v + "'");
        break;
      }
      case kDiscard: {
        if (seen_discard) return bad("--discard can only be specified once");
        seen_discard = true;
        std::string v = optarg;
        if (v == "unmap" || v == "on") o.discard_unmap = true;
        else if (v == "ignore" || v == "off") o.discard_unmap = false;
        else return bad("Invalid discard mode `" + v + "'");
        break;
      }
      case kDetectZeroes: {
        std::string v = optarg;
        if (v == "off") o.detect_zeroes = vd::nbd::DetectZeroes::off;
        else if (v == "on") o.detect_zeroes = vd::nbd::DetectZeroes::on;
        else if (v == "unmap") o.detect_zeroes = vd::nbd::DetectZeroes::unmap;
        else return bad("Failed to parse detect_zeroes mode: invalid parameter value: " + v);
        break;
      }
      case kFork: o.fork = true; break;
      case kPidFile: o.pid_file = optarg; break;
      case kPassphraseFile: o.passphrase_file = optarg; break;
      case kHandshakeLimit: {
        auto v = number(optarg, "handshake limit", 3600);
        if (!v) return v.error();
        o.handshake_seconds = static_cast<unsigned>(*v);
        break;
      }
      case ':':
        return bad(std::string("option requires an argument -- '") + static_cast<char>(optopt) + "'");
      default:
        if (optopt) return bad(std::string("invalid option -- '") + static_cast<char>(optopt) + "'");
        return bad(std::string("unrecognized option '") + argv[optind - 1] + "'");
    }
  }
  if (o.help || o.version) return o;
  if (o.images.empty()) return bad("Invalid number of arguments");
  if (o.images.size() == 1) {
    // qemu-nbd: -x and -D apply to the one image wherever they stand.
    // The last one given wins, as in qemu-nbd.
    o.images[0].name = pending_name ? *pending_name : names[0].first.value_or("");
    o.images[0].description = pending_desc ? *pending_desc : names[0].second.value_or("");
  } else {
    std::set<std::string> seen;
    for (size_t i = 0; i < o.images.size(); ++i) {
      o.images[i].name = names[i].first.value_or("");
      o.images[i].description = names[i].second.value_or("");
      if (!seen.insert(o.images[i].name).second) {
        return bad("export name '" + o.images[i].name + "' given twice: put -x NAME before each FILE");
      }
    }
    if (pending_name || pending_desc) return bad("-x/-D after the last FILE");
  }
  if (o.force_share && !o.read_only) return bad("--force-share requires --read-only");
  if (o.detect_zeroes == vd::nbd::DetectZeroes::unmap && !o.discard_unmap)
    return bad("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
  // qemu-nbd refuses native without O_DIRECT; vd has no Linux AIO engine at all.
  if (native_aio) return bad("--aio=native (Linux AIO) is not implemented; use io_uring or threads");
  if (tls_creds) {
    auto it = tls_objects.find(*tls_creds);
    if (it == tls_objects.end()) return bad("No TLS credentials with id '" + *tls_creds + "'");
    o.tls_dir = it->second.dir;
    o.tls_verify_peer = it->second.verify_peer;
  }
  return o;
}

}  // namespace vdnbd
