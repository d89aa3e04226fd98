#include "faults/step_util.h"

namespace vdtest::faults {

Bytes content_of(const Files& files, const OpenSpec& spec) {
  Rig rig(files);
  vd::Error e = rig.open(spec);
  EXPECT_FALSE(e) << e.message();
  return e ? Bytes{} : rig.read_all();
}

uint64_t be64_at(const Bytes& b, uint64_t offset) {
  uint64_t v = 0;
  for (uint64_t i = 0; i < 8 && offset + i < b.size(); ++i) v = (v << 8) | std::to_integer<uint64_t>(b[offset + i]);
  return v;
}

vd::qcow::QcowImage& qcow(Rig& rig) { return dynamic_cast<vd::qcow::QcowImage&>(rig.top()); }

void expect_write_step_fails_cleanly(const WriteStep& s) {
  const Bytes old = content_of(s.files, s.spec);
  const Bytes wanted = overlay(old, s.offset, s.data);
  Rig rig(s.files);
  ASSERT_FALSE(rig.open(s.spec));
  if (s.before) s.before(rig);
  const uint64_t size0 = rig.file_size(s.spec.top);

  rig.io.fail(s.fault, injected_error(), s.skip);
  vd::Error e = rig.write(s.offset, s.data);
  EXPECT_TRUE(is_injected(e)) << "expected the injected error, got: " << e.message();
  EXPECT_EQ(rig.io.faults_injected(), 1u) << "the fault never fired: the step was not reached";
  rig.io.clear_faults();

  EXPECT_TRUE(old_or_new(rig.read_all(), old, nullptr, 512)) << "in-memory state after the failure";
  EXPECT_LE(rig.file_size(s.spec.top), size0) << "the file grew for a write that failed";
  {
    SCOPED_TRACE("reopen of the bytes right after the failure");
    expect_recovers(rig.snapshot(), s.spec, {&old, nullptr, 512, false});
  }
  {
    SCOPED_TRACE("the in-memory state, flushed");
    ASSERT_FALSE(rig.flush());
    expect_recovers(rig.snapshot(), s.spec, {&old, nullptr, 512, false});
  }
  {
    SCOPED_TRACE("the same write again, without the fault");
    vd::Error again = rig.write(s.offset, s.data);
    ASSERT_FALSE(again) << again.message();
    ASSERT_FALSE(rig.flush());
    EXPECT_EQ(rig.read_all(), wanted);
    expect_recovers(rig.snapshot(), s.spec, {&wanted, nullptr, 512, false});
  }
}

void expect_flush_step_fails_cleanly(const FlushStep& s) {
  const Bytes old = content_of(s.files, s.spec);
  Rig rig(s.files);
  ASSERT_FALSE(rig.open(s.spec));
  vd::Error ce = s.change(rig);
  ASSERT_FALSE(ce) << ce.message();
  const Bytes wanted = rig.read_all();

  rig.io.fail(s.fault(rig), injected_error(), s.skip);
  vd::Error e = rig.flush();
  EXPECT_TRUE(is_injected(e)) << "expected the injected error, got: " << e.message();
  EXPECT_EQ(rig.io.faults_injected(), 1u) << "the fault never fired: the step was not reached";
  rig.io.clear_faults();

  EXPECT_EQ(rig.read_all(), wanted) << "a failed flush must not change what the image reads";
  {
    SCOPED_TRACE("reopen of the bytes right after the failed flush");
    expect_recovers(rig.snapshot(), s.spec, {&old, &wanted, s.grain, true});
  }
  {
    SCOPED_TRACE("a second flush, without the fault");
    vd::Error again = rig.flush();
    ASSERT_FALSE(again) << again.message();
    expect_recovers(rig.snapshot(), s.spec, {&wanted, nullptr, s.grain, false});
  }
}

}  // namespace vdtest::faults
