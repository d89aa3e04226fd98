#include "support/qemu_fixtures.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>

#include "vd/registry.h"
#include "vd/runtime.h"

namespace vdtest {
namespace {

const std::string kSecret = std::string("--object secret,id=sec0,data=") + kFixturePassphrase;

// Patterns at unaligned offsets; zeroes on allocated clusters (qemu keeps them as
// preallocated zero clusters on v3), an unmapping zero write, a discard of allocated data,
// zeroes on unallocated clusters (plain zero clusters), and data ending at the last byte.
const std::vector<std::string> kStandardCommands = {
    "write -P 0x11 1000 70000", "write -P 0x22 300k 5000",  "write -P 0x33 1M 512k",
    "write -z 1088k 64k",       "write -z -u 1216k 64k",    "discard 1344k 64k",
    "write -z 3M 128k",         "write -P 0x44 5M 4096",    "write -P 0x55 8385608 3000"};

std::string join_commands(const std::vector<std::string>& cmds) {
  std::string s;
  for (const auto& c : cmds) s += " -c '" + c + "'";
  return s;
}

std::string qio(const std::string& image, const std::string& fmt,
                const std::vector<std::string>& cmds) {
  return "qemu-io -f " + fmt + join_commands(cmds) + " " + image + " >/dev/null";
}

std::string create(const std::string& fmt, const std::string& opts, const std::string& image,
                   const std::string& size) {
  return "qemu-img create -q -f " + fmt + (opts.empty() ? "" : " -o " + opts) + " " + image +
         " " + size;
}

// A raw source with pattern runs, text (partly compressible) and random (incompressible)
// clusters, for `convert -c`.
std::string compressible_source() {
  return create("raw", "", "src.raw", "8M") + " && " + standard_workload("src.raw", "raw") +
         " && seq 1 150000 | dd of=src.raw bs=4k seek=512 conv=notrunc status=none"
         " && head -c 256k /dev/urandom | dd of=src.raw bs=4k seek=1536 conv=notrunc status=none";
}

ImageRecipe qcow2(const std::string& name, const std::string& opts) {
  return {name, "qcow2", "top.qcow2",
          create("qcow2", opts, "top.qcow2", "8M") + " && " + standard_workload("top.qcow2", "qcow2")};
}

ImageRecipe compressed(const std::string& name, const std::string& fmt, const std::string& opts,
                       const std::vector<std::string>& then = {}) {
  const std::string top = "top." + fmt;
  // qemu-img 7.2 exits 1 after a correct `convert -c -O qcow` (its final empty compressed
  // write fails on qcow v1): the image itself is checked by the reading tests.
  std::string s = compressible_source() + " && (qemu-img convert -c -O " + fmt +
                  (opts.empty() ? "" : " -o " + opts) + " src.raw " + top +
                  (fmt == "qcow" ? " || true) && test -s " + top : ")");
  if (!then.empty()) s += " && " + qio(top, fmt, then);
  return {name, fmt, top, s};
}

// Writes at subcluster granularity (2 KiB subclusters of 64 KiB clusters): allocated, zero
// and unallocated subclusters mix inside one cluster.
const std::vector<std::string> kSubclusterCommands = {
    "write -P 1 0 2k",      "write -P 2 6k 3k",      "write -z 4k 2k",
    "write -z 128k 4k",     "write -P 3 200k 10000", "discard 200k 2k",
    "write -z -u 202k 2k",  "write -P 4 1M 64k",     "write -z 1032k 2k",
    "discard 1040k 4k",     "write -P 5 3000k 777"};

ImageRecipe subclusters(const std::string& name, bool backing, const std::string& cluster) {
  std::string s;
  if (backing)
    s = create("qcow2", "", "base.qcow2", "4M") + " && " +
        qio("base.qcow2", "qcow2", {"write -P 0x77 0 4M"}) + " && ";
  s += create("qcow2",
              "extended_l2=on,cluster_size=" + cluster +
                  (backing ? ",backing_file=base.qcow2,backing_fmt=qcow2" : ""),
              "top.qcow2", "4M") +
       " && " + qio("top.qcow2", "qcow2", kSubclusterCommands);
  return {name, "qcow2", "top.qcow2", s};
}

std::string create_luks(const std::string& image) {
  return qemu_img_create_luks_sh("qcow2", "encrypt.format=luks,encrypt.key-secret=sec0", image, "4M",
                                 kFixturePassphrase);
}

ImageRecipe encrypted(const std::string& name, const std::string& fmt, bool luks) {
  const std::string top = "top." + fmt;
  std::string s = luks ? create_luks(top)
                       : "qemu-img create -q -f " + fmt + " " + kSecret +
                             " -o encrypt.format=aes,encrypt.key-secret=sec0 " + top + " 4M";
  s += " && " + qemu_io_encrypted(top, fmt,
                                  {"write -P 0x11 1000 70000", "write -P 0x22 1M 300000",
                                   "write -z 2M 64k", "write -P 0x33 4193000 1304"});
  return {name, fmt, top, s, true};
}

// raw (2 MiB) <- qcow v1 (4 MiB, parent format not recordable) <- qcow2 (6 MiB).
ImageRecipe chain_raw_v1_v2(const std::string& name, bool with_format) {
  std::string s =
      create("raw", "", "base.raw", "2M") + " && " + qio("base.raw", "raw", {"write -P 0xa1 0 2M"}) +
      " && qemu-img create -q -f qcow -b base.raw -F raw mid.qcow 4M && " +
      qio("mid.qcow", "qcow", {"write -P 0xb2 512k 100000", "write -P 0xb3 2M 1M", "write -z 1M 64k"}) +
      " && qemu-img create -q -f qcow2 -b mid.qcow -F qcow top.qcow2 6M && " +
      qio("top.qcow2", "qcow2",
          {"write -P 0xc4 700k 5000", "write -z 1536k 64k", "write -P 0xc5 5M 4096",
           "discard 512k 64k", "write -z -u 2560k 64k"});
  ImageRecipe r{name, "qcow2", "top.qcow2", s};
  r.drop_backing_format = !with_format;
  return r;
}

std::vector<ImageRecipe> make_recipes() {
  std::vector<ImageRecipe> r;
  for (const char* compat : {"0.10", "1.1"})
    for (const char* cs : {"512", "4k", "64k", "2M"}) {
      std::string name = std::string(compat[0] == '0' ? "v2" : "v3") + "_c" + cs;
      r.push_back(qcow2(name, std::string("compat=") + compat + ",cluster_size=" + cs));
    }
  for (const char* bits : {"1", "8", "64"})
    r.push_back(qcow2(std::string("v3_refcount") + bits, std::string("cluster_size=4k,refcount_bits=") + bits));
  r.push_back(qcow2("v3_prealloc_metadata", "preallocation=metadata"));
  r.push_back(qcow2("lazy_refcounts", "lazy_refcounts=on"));
  r.push_back({"qcow_v1", "qcow", "top.qcow", create("qcow", "", "top.qcow", "8M") + " && " +
                                                   standard_workload("top.qcow", "qcow")});

  r.push_back(compressed("zlib_v3", "qcow2", "compression_type=zlib"));
  r.push_back(compressed("zstd_v3", "qcow2", "compression_type=zstd"));
  r.push_back(compressed("zlib_v2", "qcow2", "compat=0.10"));
  r.push_back(compressed("zlib_c4k", "qcow2", "cluster_size=4k"));
  r.push_back(compressed("zstd_c512", "qcow2", "cluster_size=512,compression_type=zstd"));
  r.push_back(compressed("zstd_c2M", "qcow2", "cluster_size=2M,compression_type=zstd"));
  r.push_back(compressed("zlib_overwritten", "qcow2", "",
                         {"write -P 0x66 70000 1000", "write -z 2M 64k", "discard 6M 64k"}));
  r.push_back(compressed("qcow_v1_compressed", "qcow", ""));

  r.push_back(subclusters("extended_l2", false, "64k"));
  r.push_back(subclusters("extended_l2_backing", true, "64k"));
  r.push_back(subclusters("extended_l2_c2M", true, "2M"));

  // qemu 7.2 opens a relative data-file name from its working directory, not the image's
  // folder: absolute names keep both readers on the same file.
  r.push_back(qcow2("data_file", "data_file=$PWD/top.data"));
  r.push_back(qcow2("data_file_raw", "data_file=$PWD/top.data,data_file_raw=on"));

  r.push_back({"lazy_dirty", "qcow2", "top.qcow2",
               create("qcow2", "lazy_refcounts=on", "top.qcow2", "8M") +
                   " && (qemu-io -f qcow2" +
                   join_commands({"write -P 0x11 1000 70000", "write -z 3M 128k",
                                  "write -P 0x22 5M 64k", "flush", "sigraise 9"}) +
                   " top.qcow2 >/dev/null 2>&1; true) 2>/dev/null"});

  // Internal snapshots: "first" of a 1 MiB disk that later grew to 4 MiB (its L1 table is
  // smaller than the active one), "second" after more writes, then writes that unshare.
  r.push_back({"snapshots", "qcow2", "top.qcow2",
               create("qcow2", "cluster_size=512", "top.qcow2", "1M") + " && " +
                   qio("top.qcow2", "qcow2", {"write -P 1 1000 5000", "write -P 2 900k 10000"}) +
                   " && qemu-img snapshot -c first top.qcow2 && qemu-img resize -q top.qcow2 4M && " +
                   qio("top.qcow2", "qcow2", {"write -P 3 3000 100", "write -P 4 3M 1000"}) +
                   " && qemu-img snapshot -c second top.qcow2 && " +
                   qio("top.qcow2", "qcow2", {"write -z 0 4k", "discard 3M 512", "write -P 5 2M 700"})});
  r.push_back({"snapshots_v2", "qcow2", "top.qcow2",
               create("qcow2", "compat=0.10", "top.qcow2", "4M") + " && " +
                   qio("top.qcow2", "qcow2", {"write -P 1 0 200k", "write -P 2 3M 7000"}) +
                   " && qemu-img snapshot -c a top.qcow2 && " +
                   qio("top.qcow2", "qcow2", {"write -P 3 100k 1000", "write -z 3M 64k"}) +
                   " && qemu-img snapshot -c b top.qcow2 && " +
                   qio("top.qcow2", "qcow2", {"write -P 4 0 64k"})});

  r.push_back(encrypted("luks", "qcow2", true));
  r.push_back(encrypted("aes_qcow2", "qcow2", false));
  r.push_back(encrypted("aes_qcow", "qcow", false));

  r.push_back(chain_raw_v1_v2("chain_raw_qcow_qcow2", true));
  r.push_back(chain_raw_v1_v2("chain_no_backing_fmt", false));
  r.push_back({"chain_qcow2_v2_v3", "qcow2", "top.qcow2",
               create("qcow2", "compat=0.10", "base.qcow2", "4M") + " && " +
                   qio("base.qcow2", "qcow2", {"write -P 0xa1 0 4M"}) + " && " +
                   create("qcow2", "cluster_size=4k,backing_file=base.qcow2,backing_fmt=qcow2",
                          "mid.qcow2", "6M") +
                   " && " + qio("mid.qcow2", "qcow2", {"write -P 0xb2 5000 9000", "write -z 64k 64k", "write -P 0xb3 4M 100k"}) +
                   " && " + create("qcow2", "cluster_size=512,backing_file=mid.qcow2,backing_fmt=qcow2", "top.qcow2", "8M") +
                   " && " + qio("top.qcow2", "qcow2", {"write -P 0xc4 7000 1000", "discard 4M 4k", "write -P 0xc5 7M 3333"})});
  r.push_back({"chain_qcow2_same_size", "qcow2", "top.qcow2",
               create("qcow2", "", "base.qcow2", "4M") + " && " +
                   qio("base.qcow2", "qcow2", {"write -P 0xa1 0 3M", "write -z 1M 64k"}) + " && " +
                   create("qcow2", "cluster_size=4k,backing_file=base.qcow2,backing_fmt=qcow2",
                          "mid.qcow2", "4M") +
                   " && " + qio("mid.qcow2", "qcow2", {"write -P 0xb2 5000 9000", "write -z 64k 64k"}) +
                   " && " + create("qcow2", "backing_file=mid.qcow2,backing_fmt=qcow2", "top.qcow2", "4M") +
                   " && " + qio("top.qcow2", "qcow2", {"write -P 0xc4 7000 1000", "discard 2M 64k"})});
  r.push_back({"chain_qcow2_under_qcow", "qcow", "top.qcow",
               create("qcow2", "", "base.qcow2", "3M") + " && " +
                   qio("base.qcow2", "qcow2", {"write -P 0xa1 0 3M", "write -z 1M 64k"}) +
                   " && qemu-img create -q -f qcow -b base.qcow2 -F qcow2 top.qcow 6M && " +
                   qio("top.qcow", "qcow", {"write -P 0xb2 100k 5000", "write -P 0xb3 5M 1000"})});
  return r;
}

// Hides the backing-format header extension of `image` under an unknown magic (skipped by
// readers), so the parent's format must be probed. qemu-img 7.2 refuses to write such an
// image itself.
void drop_backing_format(const std::string& image) {
  const int64_t at = find_bytes(image, std::string("\xe2\x79\x2a\xca", 4), 4096);
  ASSERT_GT(at, 0) << "no backing-format extension in " << image;
  poke_be32(image, static_cast<uint64_t>(at), 0x7664ee01);
}

}  // namespace

std::string standard_workload(const std::string& image, const std::string& fmt) {
  return qio(image, fmt, kStandardCommands);
}

std::string qemu_io_encrypted(const std::string& image, const std::string& fmt,
                              const std::vector<std::string>& commands) {
  return "qemu-io " + kSecret + " --image-opts" + join_commands(commands) + " driver=" + fmt +
         ",file.filename=" + image + ",encrypt.key-secret=sec0 >/dev/null";
}

const std::vector<ImageRecipe>& read_recipes() {
  static const std::vector<ImageRecipe> all = make_recipes();
  return all;
}

const ImageRecipe& recipe(const std::string& name) {
  for (const auto& r : read_recipes())
    if (r.name == name) return r;
  throw std::invalid_argument("no image recipe '" + name + "'");
}

std::string build_image(const TempDir& dir, const ImageRecipe& r) {
  sh("cd " + dir.path() + " && " + r.script);
  if (r.drop_backing_format) drop_backing_format(dir.file(r.top));
  return dir.file(r.top);
}

const SharedImage& shared_image(const std::string& recipe_name) {
  struct Entry {
    std::unique_ptr<TempDir> dir;
    SharedImage img;
  };
  static std::map<std::string, Entry> cache;  // folders removed at exit
  if (auto it = cache.find(recipe_name); it != cache.end()) return it->second.img;
  Entry e;
  e.dir = std::make_unique<TempDir>();
  e.img.recipe = &recipe(recipe_name);
  e.img.image = build_image(*e.dir, *e.img.recipe);
  e.img.qemu_bytes = qemu_read_all(e.img.image, e.img.recipe->format, e.img.recipe->encrypted);
  return cache.emplace(recipe_name, std::move(e)).first->second.img;
}

std::vector<std::byte> qemu_read_all(const std::string& image, const std::string& fmt,
                                     bool encrypted, const std::optional<std::string>& snapshot) {
  const std::string out = image + ".qemu.raw";
  std::string cmd = "qemu-img convert -O raw";
  if (snapshot) cmd += " -l '" + *snapshot + "'";
  if (encrypted)
    cmd += " " + kSecret + " --image-opts driver=" + fmt + ",file.filename=" + image +
           ",encrypt.key-secret=sec0 " + out;
  else
    cmd += " -f " + fmt + " " + image + " " + out;
  sh(cmd);
  auto bytes = read_file(out);
  std::remove(out.c_str());
  return bytes;
}

namespace {
// Opens through vd::Disk read-only and reads the whole disk in odd-sized chunks, so every
// read starts and ends inside a cluster.
vd::Result<std::vector<std::byte>> read_through_vd(const std::string& image,
                                                   vd::DiskOpenOptions opts) {
  vd::Runtime rt(2);
  auto registry = vd::Registry::builtin();
  opts.flags |= vd::open_read_only;
  auto disk = vd::Disk::open(image, opts, registry, rt.files());
  if (!disk) return disk.error();
  constexpr uint64_t kChunk = 777 * 1024 + 123;
  std::vector<std::byte> all((*disk)->size());
  vd::Error first;
  for (uint64_t at = 0; at < all.size() && !first; at += kChunk) {
    std::span<std::byte> part(all.data() + at, std::min<uint64_t>(kChunk, all.size() - at));
    first = rt.wait([&](vd::Completion done) { (*disk)->read(at, part, std::move(done)); });
  }
  vd::Error closed = (*disk)->close();
  if (first) return first;
  if (closed) return closed;
  return all;
}
}  // namespace

vd::Error vd_try_read_all(const std::string& image, vd::DiskOpenOptions opts) {
  auto r = read_through_vd(image, std::move(opts));
  return r ? vd::Error() : r.error();
}

std::vector<std::byte> vd_read_all(const std::string& image, vd::DiskOpenOptions opts) {
  auto r = read_through_vd(image, std::move(opts));
  if (!r) {
    ADD_FAILURE() << "vd could not read " << image << ": " << r.error().message();
    return {};
  }
  return std::move(*r);
}

std::string passphrase_file(const TempDir& dir) {
  const std::string path = dir.file("passphrase.txt");
  std::ofstream(path) << kFixturePassphrase;
  return path;
}

int64_t find_bytes(const std::string& path, const std::string& bytes, uint64_t limit) {
  auto data = read_file(path);
  const auto end = data.begin() + static_cast<ptrdiff_t>(std::min<uint64_t>(limit, data.size()));
  auto it = std::search(data.begin(), end, bytes.begin(), bytes.end(),
                        [](std::byte a, char b) { return a == static_cast<std::byte>(b); });
  return it == end ? -1 : it - data.begin();
}

}  // namespace vdtest
