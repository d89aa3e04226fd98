// The harness of the write interop tests (issue 4): one random workload of qemu-io commands
// is replayed through `qemu-io` on one copy of an image and through `vdimg io` on another,
// session by session (each session is a separate process, so state must survive reopening),
// and the two copies must then read the same (`qemu-img compare`) while vdimg's copy checks
// clean (`qemu-img check`: no corruption, no leaks).
//
// Every failure message carries the whole command list so far, so a failing seed can be
// replayed by hand.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/support.h"

namespace vdtest::write {

// One copy of an image under test, and how each tool opens it.
struct Target {
  std::string path;
  std::string fmt = "qcow2";
  std::optional<std::string> secret;  // passphrase of an encrypted image
  std::string passfile;               // the same, in a file for vdimg

  // qemu's way to name the image: `-f FMT PATH`, or --image-opts with the key secret.
  std::vector<std::string> qemu_args() const {
    if (!secret) return {"-f", fmt, path};
    return {"--object", "secret,id=sec0,data=" + *secret, "--image-opts",
            "driver=" + fmt + ",file.filename=" + path + ",encrypt.key-secret=sec0"};
  }
  std::string qemu_spec() const {
    return secret ? "driver=" + fmt + ",file.filename=" + path + ",encrypt.key-secret=sec0" : path;
  }
};

// The shape of an image, for choosing offsets that hit its interesting boundaries.
struct Geometry {
  uint64_t size = 8ull << 20;
  uint64_t cluster = 64 * 1024;
  uint64_t l2_coverage = 512ull << 20;  // guest bytes one L2 table maps
  bool discard = true;                  // QCOW v1: qemu ignores discard, so it is left out
};

using Session = std::vector<std::string>;

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t below(uint64_t n) { return n ? g_() % n : 0; }
  bool chance(unsigned percent) { return below(100) < percent; }

 private:
  std::mt19937_64 g_;
};

// One range: mostly unaligned and short, some cluster-aligned, some across an L2 table's end.
inline std::pair<uint64_t, uint64_t> pick_range(Rng& r, const Geometry& g) {
  uint64_t off = 0, len = 0;
  const unsigned kind = static_cast<unsigned>(r.below(100));
  if (kind < 50) {
    off = r.below(g.size);
    const uint64_t cap = std::min<uint64_t>(3 * g.cluster, 256 * 1024);
    len = 1 + r.below(r.chance(30) ? 1024 : cap);
  } else if (kind < 75) {
    off = r.below(g.size / g.cluster) * g.cluster;
    len = (1 + r.below(4)) * g.cluster;
  } else if (kind < 90 && g.l2_coverage < g.size) {
    const uint64_t tables = g.size / g.l2_coverage;
    const uint64_t edge = (1 + r.below(tables > 1 ? tables - 1 : 1)) * g.l2_coverage;
    off = edge - std::min(edge, 1 + r.below(2 * g.cluster));
    if (r.chance(50)) off &= ~(g.cluster - 1);
    len = 1 + r.below(4 * g.cluster);
  } else {
    off = r.below(g.size);
    len = 1 + r.below(g.size / 4);  // a long one
  }
  off = std::min(off, g.size - 1);
  len = std::min(len, g.size - off);
  return {off, len};
}

inline std::string one_command(Rng& r, const Geometry& g) {
  const unsigned op = static_cast<unsigned>(r.below(100));
  if (op < 8) return "flush";
  auto [off, len] = pick_range(r, g);
  const std::string range = std::to_string(off) + " " + std::to_string(len);
  if (op < 55) return "write -P " + std::to_string(r.below(256)) + " " + range;
  if (op < 70) return "write -z " + range;
  if (op < 82 || !g.discard) return "write -z -u " + range;
  return "discard " + range;
}

inline std::vector<Session> make_workload(const Geometry& g, uint64_t seed, int sessions = 3,
                                          int commands = 14) {
  Rng r(seed * 0x9e3779b97f4a7c15ull + 17);
  std::vector<Session> out(static_cast<size_t>(sessions));
  for (auto& s : out)
    for (int i = 0; i < commands; ++i) s.push_back(one_command(r, g));
  return out;
}

inline std::string describe(const std::vector<Session>& w, size_t upto) {
  std::ostringstream s;
  for (size_t i = 0; i < w.size() && i <= upto; ++i) {
    s << "  session " << i << ":";
    for (const auto& c : w[i]) s << " -c '" << c << "'";
    s << "\n";
  }
  return s.str();
}

inline CmdResult qemu_io(const Target& t, const Session& cmds) {
  std::vector<std::string> argv{"qemu-io"};
  for (const auto& c : cmds) {
    argv.push_back("-c");
    argv.push_back(c);
  }
  for (auto& a : t.qemu_args()) argv.push_back(a);
  return run(argv);
}

inline CmdResult vdimg_io(const Target& t, const Session& cmds) {
  std::vector<std::string> argv{vdimg_path(), "io", "-q", "-f", t.fmt};
  if (t.secret) {
    argv.push_back("--passphrase-file");
    argv.push_back(t.passfile);
  }
  for (const auto& c : cmds) {
    argv.push_back("-c");
    argv.push_back(c);
  }
  argv.push_back(t.path);
  return run(argv);
}

inline CmdResult qemu_compare(const Target& a, const Target& b) {
  if (!a.secret) return run({"qemu-img", "compare", "-f", a.fmt, "-F", b.fmt, a.path, b.path});
  return run({"qemu-img", "compare", "--object", "secret,id=sec0,data=" + *a.secret, "--image-opts",
              a.qemu_spec(), b.qemu_spec()});
}

inline CmdResult qemu_check(const Target& t) {
  if (!t.secret) return run({"qemu-img", "check", "-f", t.fmt, t.path});
  return run({"qemu-img", "check", "--object", "secret,id=sec0,data=" + *t.secret, "--image-opts",
              t.qemu_spec()});
}

// Replays `w` on both copies, session by session. Returns false (after recording the
// failure) at the first divergence, so callers can stop.
inline bool replay(const Target& q, const Target& v, const std::vector<Session>& w,
                   const std::function<void(size_t)>& between = {}) {
  for (size_t i = 0; i < w.size(); ++i) {
    CmdResult qr = qemu_io(q, w[i]);
    if (qr.exit_code != 0 || qr.out.find("failed") != std::string::npos) {
      ADD_FAILURE() << "qemu-io failed (fixture problem):\n" << qr.out << qr.err << describe(w, i);
      return false;
    }
    CmdResult vr = vdimg_io(v, w[i]);
    if (vr.exit_code != 0) {
      ADD_FAILURE() << "vdimg io failed: " << vr.out << vr.err << "\n" << describe(w, i);
      return false;
    }
    CmdResult cr = qemu_compare(q, v);
    if (cr.exit_code != 0) {
      ADD_FAILURE() << "images differ after session " << i << ": " << cr.out << cr.err << "\n"
                    << describe(w, i);
      return false;
    }
    if (v.fmt == "qcow2") {
      CmdResult ck = qemu_check(v);
      if (ck.exit_code != 0) {
        ADD_FAILURE() << "qemu-img check of vdimg's copy failed (exit " << ck.exit_code
                      << ") after session " << i << ":\n" << ck.out << ck.err << describe(w, i);
        return false;
      }
    }
    if (between) between(i);
  }
  return true;
}

// Geometry for a QCOW2 image: L2 tables hold cluster/8 entries (cluster/16 with extended L2).
inline Geometry qcow2_geometry(uint64_t size, uint64_t cluster, bool extended_l2 = false) {
  Geometry g;
  g.size = size;
  g.cluster = cluster;
  g.l2_coverage = cluster * (cluster / (extended_l2 ? 16 : 8));
  return g;
}

}  // namespace vdtest::write
