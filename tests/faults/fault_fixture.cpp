#include "faults/fault_fixture.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>

#include "backends/builtin.h"

namespace vdtest::faults {

Files make_files(const std::string& script, const std::vector<std::string>& names) {
  TempDir dir;
  sh("cd '" + dir.path() + "' && { " + script + " ; } >/dev/null");
  Files out;
  for (const auto& n : names) out[n] = read_file(dir.file(n));
  return out;
}

CheckOutcome qemu_check(const Files& files, const std::string& image, const std::string& format,
                        const std::optional<std::string>& passphrase) {
  TempDir dir;
  for (const auto& [name, bytes] : files) write_file(dir.file(name), bytes);
  // In the folder: qemu opens a relative external data file name from the working directory.
  const std::string cmd =
      "cd '" + dir.path() + "' && exec qemu-img check " +
      (passphrase ? "--object secret,id=sec0,data=" + *passphrase + " --image-opts driver=" + format +
                        ",file.filename=" + image + ",encrypt.key-secret=sec0"
                  : "-f " + format + " " + image);
  CmdResult r = run({"sh", "-c", cmd});
  return CheckOutcome{r.exit_code, r.out + r.err};
}

// ---- Rig ---------------------------------------------------------------------------------

Rig::Rig(const Files& files) : io(ctx.get_executor()) {
  for (const auto& [name, bytes] : files) {
    io.load(name, bytes);
    names_.push_back(name);
  }
}

Rig::~Rig() {
  // Closing flushes: whatever the test left armed must not fire now.
  io.clear_faults();
  io.hold(false);
  io.fire_all_in_order();
  disk_.reset();
  ctx.restart();
  ctx.run();
}

vd::Result<std::unique_ptr<vd::Disk>> open_chain(vd::IoProvider& io, const OpenSpec& spec) {
  auto backend = [](const std::string& format) -> const vd::Backend& {
    if (format == "raw") return vd::backends::raw();
    if (format == "qcow") return vd::backends::qcow();
    if (format == "luks") return vd::backends::luks();
    return vd::backends::qcow2();
  };
  std::vector<std::unique_ptr<vd::Image>> chain;
  vd::OpenOptions o;
  o.flags = vd::open_format_given;
  o.cache_bytes = spec.cache_bytes;
  o.passphrase = spec.passphrase;
  auto top = backend(spec.top_format).open(spec.top, o, io);
  if (!top) return top.error();
  chain.push_back(std::move(*top));
  if (spec.base) {
    const std::string format = spec.base_format ? *spec.base_format : spec.base->ends_with(".raw") ? "raw" : "qcow2";
    vd::OpenOptions bo;
    bo.flags = vd::open_read_only | vd::open_format_given;
    auto base = backend(format).open(*spec.base, bo, io);
    if (!base) return base.error();
    chain.push_back(std::move(*base));
  }
  return vd::Disk::assemble(std::move(chain), &io);
}

Tracked track(vd::Completion done, MockIoProvider* io) {
  Tracked t;
  t.returned = std::make_shared<bool>(false);
  t.calls = std::make_shared<int>(0);
  if (io) io->begin_data_path();
  t.done = [io, returned = t.returned, calls = t.calls, done = std::move(done)](vd::Error e) {
    if (!*returned) ADD_FAILURE() << "completion ran inside the call that started it (completions must be posted)";
    if (++*calls > 1) {
      ADD_FAILURE() << "completion ran " << *calls << " times";
      return;
    }
    if (io) io->end_data_path();
    done(e);
  };
  return t;
}

vd::Error run_on(boost::asio::io_context& ctx, const std::function<void(vd::Completion)>& start,
                 MockIoProvider* io) {
  auto result = std::make_shared<vd::Error>();
  Tracked t = track([result](vd::Error e) { *result = e; }, io);
  start(t.done);
  *t.returned = true;
  ctx.restart();
  ctx.run();
  EXPECT_EQ(*t.calls, 1) << "the completion must run exactly once";
  if (*t.calls == 0 && io) io->end_data_path();  // no longer in flight for the checks to come
  return *result;
}

Bytes read_disk(boost::asio::io_context& ctx, vd::Disk& disk) {
  Bytes out(disk.size());
  vd::Error e = run_on(ctx, [&](vd::Completion c) { disk.read(0, out, std::move(c)); });
  EXPECT_FALSE(e) << e.message();
  if (e) out.clear();
  return out;
}

vd::Error Rig::open(const OpenSpec& spec) {
  auto d = open_chain(io, spec);
  if (!d) return d.error();
  disk_ = std::move(*d);
  return {};
}

vd::Error Rig::run(const std::function<void(vd::Completion)>& start) { return run_on(ctx, start, &io); }

void Rig::start(const std::function<void(vd::Completion)>& start, vd::Completion done) {
  Tracked t = track(std::move(done), &io);
  start(t.done);
  *t.returned = true;
}

vd::Error Rig::write(uint64_t offset, const Bytes& data, unsigned flags) {
  return run([&](vd::Completion c) { disk_->write(offset, data, flags, std::move(c)); });
}
vd::Error Rig::write_zeroes(uint64_t offset, uint64_t length, unsigned flags) {
  return run([&](vd::Completion c) { disk_->write_zeroes(offset, length, flags, std::move(c)); });
}
vd::Result<vd::DiskExtent> Rig::block_status(uint64_t offset, uint64_t length) {
  vd::DiskExtent out;
  vd::Error e = run([&](vd::Completion c) {
    disk_->block_status(offset, length, [&out, c = std::move(c)](vd::Error err, vd::DiskExtent x) {
      out = x;
      c(err);
    });
  });
  if (e) return e;
  return out;
}
vd::Error Rig::discard(uint64_t offset, uint64_t length) {
  return run([&](vd::Completion c) { disk_->discard(offset, length, std::move(c)); });
}
vd::Error Rig::flush() {
  return run([&](vd::Completion c) { disk_->flush(std::move(c)); });
}

Bytes Rig::read_all() {
  Bytes out(disk_->size());
  vd::Error e = run([&](vd::Completion c) { disk_->read(0, out, std::move(c)); });
  EXPECT_FALSE(e) << e.message();
  if (e) out.clear();
  return out;
}

bool Rig::drive(const std::function<bool()>& done, uint32_t seed) {
  std::mt19937 rng(seed);
  io.begin_data_path();
  struct End {
    MockIoProvider& io;
    ~End() { io.end_data_path(); }
  } end{io};
  ctx.restart();
  while (!done()) {
    const size_t ran = ctx.poll();
    ctx.restart();
    if (done()) break;
    if (io.held()) {
      io.fire(std::uniform_int_distribution<size_t>(0, io.held() - 1)(rng));
    } else if (ran == 0) {
      return false;  // nothing posted, nothing held, not done: stalled
    }
  }
  return true;
}

Files Rig::snapshot() {
  Files out;
  for (const auto& n : names_) out[n] = io.bytes(n);
  return out;
}

uint64_t Rig::file_size(const std::string& name) { return io.bytes(name).size(); }

void Rig::drop_without_close() {
  // A Disk always closes (and flushes) on destruction; a crash does not. Detach the top
  // from its storage first by failing every later call.
  io.fail(IoMatch{}, injected_error("power is off"), 0, 0);
  disk_.reset();
  io.clear_faults();
}

// ---- Checks --------------------------------------------------------------------------------

::testing::AssertionResult old_or_new(const Bytes& got, const Bytes& old_content, const Bytes* new_content,
                                      uint64_t grain) {
  if (got.size() != old_content.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << old_content.size();
  for (uint64_t at = 0; at < got.size(); at += grain) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(grain, got.size() - at));
    if (std::memcmp(got.data() + at, old_content.data() + at, n) == 0) continue;
    if (new_content && std::memcmp(got.data() + at, new_content->data() + at, n) == 0) continue;
    return ::testing::AssertionFailure() << "bytes at " << vd::hex(at) << " are neither the old "
                                         << (new_content ? "nor the new " : "") << "content (first byte "
                                         << std::to_integer<int>(got[at]) << ", old "
                                         << std::to_integer<int>(old_content[at]) << ")";
  }
  return ::testing::AssertionSuccess();
}

void expect_vd_check(vd::Image& img, bool allow_leaks) {
  auto r = img.check(vd::RepairMode::none);
  if (!r && r.error().is(vd::Errc::not_supported)) return;  // QcowImage::check not there yet
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->corruptions, 0u) << "vd check: " << ::testing::PrintToString(r->messages);
  EXPECT_EQ(r->check_errors, 0u);
  if (!allow_leaks) {
    EXPECT_EQ(r->leaks, 0u) << "vd check: " << ::testing::PrintToString(r->messages);
  }
}

void expect_recovers(const Files& files, const OpenSpec& spec, const Expect& x) {
  CheckOutcome c = qemu_check(files, spec.top);
  if (x.allow_leaks) {
    EXPECT_TRUE(c.clean_or_leaks()) << c.output;
  } else {
    EXPECT_TRUE(c.clean()) << c.output;
  }
  Rig rig(files);
  vd::Error e = rig.open(spec);
  ASSERT_FALSE(e) << "reopen: " << e.message();
  if (x.old_content) {
    EXPECT_TRUE(old_or_new(rig.read_all(), *x.old_content, x.new_content, x.grain));
  }
  expect_vd_check(rig.top(), x.allow_leaks);
}

Bytes fill(size_t n, uint8_t value) { return Bytes(n, std::byte{value}); }

Bytes overlay(Bytes base, uint64_t offset, const Bytes& data) {
  std::copy(data.begin(), data.end(), base.begin() + static_cast<std::ptrdiff_t>(offset));
  return base;
}

std::string calls_text(const MockIoProvider& io) {
  std::string out;
  for (const auto& c : io.calls()) out += "  " + c.describe() + "\n";
  return out;
}

bool run_known_bugs() {
  const char* v = std::getenv("VD_RUN_KNOWN_BUGS");
  return v && std::string(v) == "1";
}

bool is_injected(const vd::Error& e) { return e && e.message().find("injected") != std::string::npos; }

}  // namespace vdtest::faults
