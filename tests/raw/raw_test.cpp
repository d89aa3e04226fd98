// The raw backend: create as qemu-img does, the data path, the properties, and the probe
// guard against a guest turning a guessed-raw image into another format (CVE-2008-2004).
#include <gtest/gtest.h>

#include <cstring>

#include "backends/builtin.h"
#include "backends/raw/raw.h"
#include "support/support.h"
#include "vd/runtime.h"

namespace {

using vd::Errc;
using vd::Error;

constexpr uint64_t kMiB = 1 << 20;

class RawTest : public ::testing::Test {
 protected:
  const vd::Backend& raw() { return vd::backends::raw(); }
  std::string path() const { return dir_.file("disk.img"); }

  std::unique_ptr<vd::Image> create(uint64_t size, std::map<std::string, std::string> o = {}) {
    vd::CreateOptions opts;
    opts.size = size;
    opts.options = std::move(o);
    auto img = raw().create(path(), opts, rt_.files());
    EXPECT_TRUE(img.ok()) << img.error().message();
    return img.ok() ? std::move(*img) : nullptr;
  }

  std::unique_ptr<vd::Image> open(unsigned flags) {
    vd::OpenOptions opts;
    opts.flags = flags;
    auto img = raw().open(path(), opts, rt_.files());
    EXPECT_TRUE(img.ok()) << img.error().message();
    return img.ok() ? std::move(*img) : nullptr;
  }

  Error write(vd::Image& img, uint64_t off, std::span<const std::byte> data, unsigned flags = 0) {
    return rt_.wait([&](vd::Completion d) { img.write(off, data, flags, d); });
  }
  Error write_str(vd::Image& img, uint64_t off, std::string_view s) {
    return write(img, off, std::as_bytes(std::span(s.data(), s.size())));
  }
  Error zeroes(vd::Image& img, uint64_t off, uint64_t len, unsigned flags) {
    return rt_.wait([&](vd::Completion d) { img.write_zeroes(off, len, flags, d); });
  }
  Error discard(vd::Image& img, uint64_t off, uint64_t len) {
    return rt_.wait([&](vd::Completion d) { img.discard(off, len, d); });
  }
  Error read(vd::Image& img, uint64_t off, std::span<std::byte> buf, vd::ReadResult* res) {
    return rt_.wait([&](vd::Completion d) {
      img.read(off, buf, [res, d](Error e, vd::ReadResult r) {
        *res = r;
        d(e);
      });
    });
  }
  std::vector<std::byte> read_all(vd::Image& img, uint64_t off, size_t len) {
    std::vector<std::byte> buf(len);
    vd::ReadResult r;
    EXPECT_FALSE(read(img, off, buf, &r));
    EXPECT_EQ(r.length, len);
    EXPECT_TRUE(r.allocated);
    return buf;
  }
  void expect_qemu_reads(const std::string& cmd) {
    auto r = vdtest::run({"qemu-io", "-f", "raw", "-r", "-c", cmd, path()});
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.out << r.err;
    EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << cmd << r.out;
  }

  vdtest::TempDir dir_;
  vd::Runtime rt_{2};
};

// ---- create --------------------------------------------------------------------------------

TEST_F(RawTest, CreateSparseHasTheSizeAndAllocatesNothing) {
  auto img = create(4 * kMiB);
  ASSERT_TRUE(img);
  EXPECT_EQ(img->size(), 4 * kMiB);
  EXPECT_EQ(vdtest::file_size(path()), 4 * kMiB);
  EXPECT_LT(*img->file_size(), kMiB);
  EXPECT_EQ(img->backend().name(), "raw");
  EXPECT_EQ(img->version(), 0u);
}

TEST_F(RawTest, CreateFullPreallocatesEveryByte) {
  auto img = create(2 * kMiB, {{"preallocation", "full"}});
  ASSERT_TRUE(img);
  EXPECT_EQ(*img->file_size(), 2 * kMiB);
}

TEST_F(RawTest, CreateFallocPreallocatesEveryByte) {
  auto img = create(2 * kMiB, {{"preallocation", "falloc"}});
  ASSERT_TRUE(img);
  EXPECT_EQ(vdtest::file_size(path()), 2 * kMiB);
  EXPECT_GE(*img->file_size(), 2 * kMiB);
}

TEST_F(RawTest, CreateRefusesPreallocationMetadataAsQemuImgDoes) {
  vd::CreateOptions opts;
  opts.size = kMiB;
  opts.options = {{"preallocation", "metadata"}};
  auto img = raw().create(path(), opts, rt_.files());
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.error().message().find("Unsupported preallocation mode: metadata"),
            std::string::npos)
      << img.error().message();
}

TEST_F(RawTest, CreateRefusesUnknownOptionNamingIt) {
  vd::CreateOptions opts;
  opts.size = kMiB;
  opts.options = {{"cluster_size", "65536"}};
  auto img = raw().create(path(), opts, rt_.files());
  ASSERT_FALSE(img.ok());
  EXPECT_TRUE(img.error().is(Errc::invalid_argument));
  EXPECT_NE(img.error().message().find("cluster_size"), std::string::npos);
}

TEST_F(RawTest, CreateRefusesBackingFile) {
  vd::CreateOptions opts;
  opts.size = kMiB;
  opts.backing_file = "base.img";
  auto img = raw().create(path(), opts, rt_.files());
  ASSERT_FALSE(img.ok());
  EXPECT_TRUE(img.error().is(Errc::not_supported));
}

TEST_F(RawTest, CreateOverwritesAnExistingFile) {
  vdtest::write_file(path(), vdtest::pattern(3 * kMiB, 1));
  auto img = create(kMiB);
  ASSERT_TRUE(img);
  EXPECT_EQ(vdtest::file_size(path()), kMiB);
  auto got = read_all(*img, 0, 4096);
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](std::byte b) { return b == std::byte{0}; }));
}

// ---- data path -----------------------------------------------------------------------------

TEST_F(RawTest, WriteThenReadBackAndQemuIoAgrees) {
  VD_REQUIRE_QEMU();
  auto img = create(kMiB);
  std::vector<std::byte> data(70000, std::byte{0xaa});
  ASSERT_FALSE(write(*img, 1234, data, vd::write_fua));
  EXPECT_EQ(read_all(*img, 1234, data.size()), data);
  ASSERT_FALSE(img->close(false));
  expect_qemu_reads("read -P 0xaa 1234 70000");
  expect_qemu_reads("read -P 0 0 1234");
}

TEST_F(RawTest, ReadsWhatQemuIoWrote) {
  VD_REQUIRE_QEMU();
  vdtest::sh("qemu-img create -f raw " + path() + " 1M >/dev/null");
  vdtest::sh("qemu-io -f raw -c 'write -P 0x5c 4096 8192' " + path() + " >/dev/null");
  auto img = open(vd::open_format_given | vd::open_read_only);
  auto got = read_all(*img, 4000, 8400);
  for (size_t i = 0; i < got.size(); ++i) {
    bool in = 4000 + i >= 4096 && 4000 + i < 4096 + 8192;
    ASSERT_EQ(got[i], in ? std::byte{0x5c} : std::byte{0}) << i;
  }
}

TEST_F(RawTest, WriteZeroesReadsZerosWithAndWithoutUnmap) {
  auto img = create(kMiB, {{"preallocation", "full"}});
  std::vector<std::byte> data(kMiB, std::byte{0x77});
  ASSERT_FALSE(write(*img, 0, data));
  ASSERT_FALSE(zeroes(*img, 100, 5000, 0));
  Error ze = zeroes(*img, 600000, 4096 * 10, vd::zero_may_unmap);
  ASSERT_FALSE(ze) << ze.message();
  auto got = read_all(*img, 0, kMiB);
  for (size_t i = 0; i < got.size(); ++i) {
    bool zero = (i >= 100 && i < 5100) || (i >= 600000 && i < 600000 + 40960);
    ASSERT_EQ(got[i], zero ? std::byte{0} : std::byte{0x77}) << i;
  }
  // Without unmap the range stays allocated; with unmap whole blocks were given back.
  EXPECT_LT(*img->file_size(), kMiB);
  EXPECT_GE(*img->file_size(), kMiB - 40960);
}

TEST_F(RawTest, UnalignedDiscardZeroesExactlyTheRangeLikeQemuIo) {
  VD_REQUIRE_QEMU();
  auto img = create(kMiB);
  std::vector<std::byte> data(kMiB, std::byte{0xaa});
  ASSERT_FALSE(write(*img, 0, data));
  ASSERT_FALSE(discard(*img, 1000, 10000));
  ASSERT_FALSE(img->close(false));
  // What qemu-io leaves after `discard 1000 10000` on a raw file of 0xaa.
  expect_qemu_reads("read -P 0xaa 0 1000");
  expect_qemu_reads("read -P 0 1000 10000");
  expect_qemu_reads("read -P 0xaa 11000 1037576");
}

TEST_F(RawTest, BlockStatusReportsHolesAsZeroAndDataInPlace) {
  auto img = create(kMiB);  // sparse: one hole
  auto status = [&](uint64_t off, uint64_t len) {
    vd::Extent ext;
    Error e = rt_.wait([&](vd::Completion d) {
      img->block_status(off, len, [&ext, d](Error err, vd::Extent x) {
        ext = x;
        d(err);
      });
    });
    EXPECT_FALSE(e) << e.message();
    return ext;
  };
  vd::Extent hole = status(4096, 500000);
  EXPECT_EQ(hole.kind, vd::Extent::Kind::zero);
  EXPECT_EQ(hole.length, 500000u);
  EXPECT_EQ(hole.host_offset, std::optional<uint64_t>(4096));  // still at its place, as qemu-img map says

  std::vector<std::byte> data(65536, std::byte{7});
  ASSERT_FALSE(vd::sync_image_write(rt_, *img, 0, data));
  vd::Extent written = status(0, kMiB);
  EXPECT_EQ(written.kind, vd::Extent::Kind::data);
  EXPECT_GE(written.length, 65536u);
  EXPECT_LT(written.length, kMiB);  // the hole after it is a separate extent
  EXPECT_EQ(written.host_offset, std::optional<uint64_t>(0));
}

TEST_F(RawTest, ResizeGrowsAndShrinksTheFile) {
  auto img = create(kMiB);
  ASSERT_FALSE(img->resize(3 * kMiB));
  EXPECT_EQ(img->size(), 3 * kMiB);
  EXPECT_EQ(vdtest::file_size(path()), 3 * kMiB);
  EXPECT_EQ(read_all(*img, 3 * kMiB - 512, 512), std::vector<std::byte>(512));
  ASSERT_FALSE(img->resize(kMiB / 2));
  EXPECT_EQ(vdtest::file_size(path()), kMiB / 2);
  EXPECT_EQ(img->size(), kMiB / 2);
}

TEST_F(RawTest, FlushSucceeds) {
  auto img = create(kMiB);
  EXPECT_FALSE(rt_.wait([&](vd::Completion d) { img->flush(d); }));
}

TEST_F(RawTest, GeometryIsDerivedUntilSet) {
  auto img = create(64 * kMiB);
  EXPECT_EQ(img->pchs(), vd::derive_pchs(64 * kMiB));
  EXPECT_EQ(img->lchs(), vd::derive_lchs(64 * kMiB));
  ASSERT_FALSE(img->set_pchs({100, 16, 63}));
  ASSERT_FALSE(img->set_lchs({200, 255, 63}));
  EXPECT_EQ(img->pchs(), (vd::Geometry{100, 16, 63}));
  EXPECT_EQ(img->lchs(), (vd::Geometry{200, 255, 63}));
  ASSERT_FALSE(img->set_pchs({}));
  EXPECT_EQ(img->pchs(), vd::derive_pchs(64 * kMiB));
}

TEST_F(RawTest, SetGeometryRefusesImpossibleValues) {
  auto img = create(kMiB);
  EXPECT_TRUE(img->set_pchs({100, 17, 63}).is(Errc::invalid_argument));
  EXPECT_TRUE(img->set_pchs({100, 16, 64}).is(Errc::invalid_argument));
  EXPECT_TRUE(img->set_lchs({100, 256, 63}).is(Errc::invalid_argument));
  EXPECT_TRUE(img->set_lchs({0, 16, 63}).is(Errc::invalid_argument));
}

TEST_F(RawTest, PropertiesOfAFormatWithoutMetadata) {
  auto img = create(kMiB);
  EXPECT_TRUE(img->check(vd::RepairMode::none).error().is(Errc::not_supported));
  EXPECT_EQ(img->check(vd::RepairMode::none).error().message(),
            "This image format does not support checks");
  EXPECT_FALSE(img->parent_filename());
  EXPECT_TRUE(img->set_parent(std::string("base.img"), std::nullopt).is(Errc::not_supported));
  EXPECT_FALSE(img->set_parent(std::nullopt, std::nullopt));
  EXPECT_TRUE(img->snapshots().empty());
  EXPECT_TRUE(img->format_info().empty());
}

TEST_F(RawTest, ReadOnlyOpenRefusesEveryChange) {
  create(kMiB);
  auto img = open(vd::open_read_only | vd::open_format_given);
  std::vector<std::byte> data(512, std::byte{1});
  for (Error e : {write(*img, 0, data), zeroes(*img, 0, 512, 0), discard(*img, 0, 512),
                  img->resize(2 * kMiB)}) {
    EXPECT_TRUE(e.is(Errc::read_only)) << e.message();
    EXPECT_NE(e.message().find(path()), std::string::npos) << e.message();
  }
  EXPECT_EQ(vdtest::file_size(path()), kMiB);
}

TEST_F(RawTest, OutOfRangeRequestsAreRefused) {
  auto img = create(kMiB);
  std::vector<std::byte> buf(1024);
  vd::ReadResult r;
  EXPECT_TRUE(read(*img, kMiB - 512, buf, &r).is(Errc::out_of_range));
  EXPECT_TRUE(write(*img, kMiB, std::span(buf).first(1)).is(Errc::out_of_range));
  EXPECT_TRUE(zeroes(*img, UINT64_MAX - 10, 20, 0).is(Errc::out_of_range));
  EXPECT_TRUE(discard(*img, 512, UINT64_MAX).is(Errc::out_of_range));
  EXPECT_EQ(vdtest::file_size(path()), kMiB);
}

TEST_F(RawTest, CloseWithRemoveDeletesTheFile) {
  auto img = create(kMiB);
  ASSERT_FALSE(img->close(true));
  EXPECT_FALSE(rt_.files().exists(path()));
}

// ---- probe guard ---------------------------------------------------------------------------

std::string qcow2_header() { return std::string("QFI\xfb\0\0\0\3", 8); }

TEST_F(RawTest, ProbeGuardRefusesQcow2HeaderWhenFormatWasGuessed) {
  create(kMiB);
  auto img = open(0);
  Error e = write_str(*img, 0, qcow2_header());
  EXPECT_TRUE(e.is(Errc::permission)) << e.message();
  EXPECT_NE(e.message().find("qcow2"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("-f raw"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find(path()), std::string::npos) << e.message();
  EXPECT_EQ(read_all(*img, 0, 4), std::vector<std::byte>(4));
}

TEST_F(RawTest, ProbeGuardAllowsTheSameWriteWithFormatGiven) {
  create(kMiB);
  auto img = open(vd::open_format_given);
  ASSERT_FALSE(write_str(*img, 0, qcow2_header()));
  EXPECT_EQ(read_all(*img, 0, 1)[0], std::byte{'Q'});
}

TEST_F(RawTest, ProbeGuardMergesPartialWriteWithCurrentSector) {
  create(kMiB);
  auto img = open(0);
  ASSERT_FALSE(write_str(*img, 0, "QF"));
  Error e = write_str(*img, 2, std::string("I\xfb", 2));
  EXPECT_TRUE(e.is(Errc::permission)) << e.message();
}

TEST_F(RawTest, ProbeGuardSerialisesConcurrentPartialWrites) {
  create(kMiB);
  auto img = open(0);
  std::string a = "QF", b("I\xfb", 2);
  Error ea, eb;
  Error all = rt_.wait([&](vd::Completion done) {
    auto left = std::make_shared<int>(2);
    img->write(0, std::as_bytes(std::span(a.data(), 2)), 0, [&, left, done](Error e) {
      ea = e;
      if (--*left == 0) done({});
    });
    img->write(2, std::as_bytes(std::span(b.data(), 2)), 0, [&, left, done](Error e) {
      eb = e;
      if (--*left == 0) done({});
    });
  });
  ASSERT_FALSE(all);
  EXPECT_FALSE(ea) << ea.message();
  EXPECT_TRUE(eb.is(Errc::permission)) << eb.message();
}

TEST_F(RawTest, ProbeGuardRefusesVdiSignatureAtOffset0x40) {
  create(kMiB);
  auto img = open(0);
  Error e = write_str(*img, 0x40, std::string("\x7f\x10\xda\xbe", 4));
  EXPECT_TRUE(e.is(Errc::permission)) << e.message();
  EXPECT_NE(e.message().find("vdi"), std::string::npos);
}

TEST_F(RawTest, ProbeGuardRefusesZeroingThatCompletesQedMagic) {
  create(kMiB);
  ASSERT_FALSE(write_str(*open(vd::open_format_given), 0, "QEDx"));
  auto img = open(0);
  EXPECT_TRUE(zeroes(*img, 3, 1, 0).is(Errc::permission));
  EXPECT_TRUE(discard(*img, 3, 100).is(Errc::permission));
  EXPECT_FALSE(zeroes(*img, 0, 4096, 0));  // zeroing the whole magic is fine
}

TEST_F(RawTest, ProbeGuardIgnoresWritesPastSectorZero) {
  create(kMiB);
  auto img = open(0);
  EXPECT_FALSE(write_str(*img, 512, qcow2_header()));
}

TEST_F(RawTest, RealMbrIsWritableWhetherProbedOrGiven) {
  auto mbr_path = dir_.file("mbr");
  vdtest::sh("bzip2 -dc " + vdtest::data_dir() + "/qemu-samples/grub_mbr.raw.bz2 > " + mbr_path);
  auto mbr = vdtest::read_file(mbr_path);
  ASSERT_EQ(mbr.size(), 512u);
  for (unsigned flags : {0u, unsigned{vd::open_format_given}}) {
    create(kMiB);
    auto img = open(flags);
    ASSERT_FALSE(write(*img, 0, mbr)) << "flags " << flags;
    ASSERT_FALSE(write(*img, 0x1be, std::span(mbr).subspan(0x1be, 66)));  // partition table
    EXPECT_EQ(read_all(*img, 0, 512), mbr);
  }
}

TEST(RawProbeGuardTest, RecognisesEveryListedSignature) {
  auto fmt = [](std::string s) {
    s.resize(512, '\0');
    auto f = vd::raw::foreign_format(std::as_bytes(std::span(s.data(), s.size())));
    return f ? std::string(*f) : std::string("raw");
  };
  EXPECT_EQ(fmt(std::string("QFI\xfb\0\0\0\1", 8)), "qcow");
  EXPECT_EQ(fmt(std::string("QFI\xfb\0\0\0\2", 8)), "qcow2");
  EXPECT_EQ(fmt(std::string("QED\0", 4)), "qed");
  EXPECT_EQ(fmt("KDMV"), "vmdk");
  EXPECT_EQ(fmt("# Disk DescriptorFile\nversion=1\n"), "vmdk");
  EXPECT_EQ(fmt("# comment\n   \nversion=2\r\n"), "vmdk");
  EXPECT_EQ(fmt("conectix"), "vpc");
  EXPECT_EQ(fmt("vhdxfile"), "vhdx");
  EXPECT_EQ(fmt(std::string(0x40, 'x') + "\x7f\x10\xda\xbe"), "vdi");
  EXPECT_EQ(fmt("WithoutFreeSpace"), "parallels");
  EXPECT_EQ(fmt("WithouFreSpacExt"), "parallels");
  EXPECT_EQ(fmt("Bochs Virtual HD Image"), "bochs");
  EXPECT_EQ(fmt("#!/bin/sh\n#V2.0 Format\nmodprobe cloop"), "cloop");
  EXPECT_EQ(fmt("LUKS\xba\xbe"), "luks");
  EXPECT_EQ(fmt(""), "raw");
  EXPECT_EQ(fmt("hello\nversion=1\n"), "raw");
}

}  // namespace
