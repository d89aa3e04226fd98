// QcowImage::amend: qemu-img amend -o for QCOW2. The options are checked first, all of
// them, with qemu-img's messages (nothing is written if one is refused); then each change is
// made and made durable in QEMU's order, so a later refusal (a downgrade that cannot be
// done) leaves the earlier changes in place, as qemu-img does.
#include <algorithm>
#include <array>
#include <cstdlib>

#include "backends/common/sizes.h"
#include "backends/qcow/amend/amend.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/header.h"

namespace vd::qcow {

namespace {

Error refused(const std::string& message) { return Error(Errc::invalid_argument, message); }
Error unsupported(const std::string& message) { return Error(Errc::not_supported, message); }

// The create options of qcow2 that amend does not take: qemu-img adds a hint for them.
constexpr std::array<const char*, 12> kCreateOnly = {
    "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg",
    "encrypt.cipher-mode", "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg",
    "cluster_size", "extended_l2", "preallocation", "compression_type"};
constexpr std::array<const char*, 5> kEncryptAmend = {"encrypt.state", "encrypt.keyslot", "encrypt.old-secret",
                                                      "encrypt.new-secret", "encrypt.iter-time"};

template <size_t N>
bool among(const std::array<const char*, N>& list, const std::string& key) {
  return std::any_of(list.begin(), list.end(), [&](const char* k) { return key == k; });
}

Result<bool> parse_bool(const std::string& key, const std::string& v) {
  if (v == "on" || v == "yes" || v == "true" || v == "y") return true;
  if (v == "off" || v == "no" || v == "false" || v == "n") return false;
  return refused("Parameter '" + key + "' expects 'on' or 'off'");
}

Result<uint64_t> parse_number(const std::string& key, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 0);
  // As qemu's number parsing: a leading '-' wraps around (strtoull), and is refused later.
  if (v.empty() || *end) return refused("Parameter '" + key + "' expects a number");
  if (errno == ERANGE) return refused("Value '" + v + "' is too large for parameter '" + key + "'");
  return static_cast<uint64_t>(n);
}

}  // namespace

// qemu-img's option parsing (unknown keys, value types), then qcow2_amend_options' checks
// in the order of its option list.
Result<AmendPlan> parse_amend_options(const std::map<std::string, std::string>& options) {
  AmendPlan p;
  for (const auto& [key, value] : options) {
    if (key == "size") {
      auto n = parse_size(value);
      if (!n)
        return refused("Parameter 'size' expects a non-negative number below 2^64\n"
                       "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                       "and exabytes, respectively.");
      p.size = *n;
    } else if (key == "compat") {
      if (value == "0.10" || value == "v2") p.version = 2;
      else if (value == "1.1" || value == "v3") p.version = 3;
      else p.version = 0;  // reported below, after the type checks of the other options
    } else if (key == "backing_file") {
      p.backing_file = value;
    } else if (key == "backing_fmt") {
      p.backing_format = value;
    } else if (key == "data_file") {
      p.data_file = value;
    } else if (key == "data_file_raw" || key == "lazy_refcounts") {
      auto b = parse_bool(key, value);
      if (!b) return b.error();
      (key == "data_file_raw" ? p.data_file_raw : p.lazy_refcounts) = *b;
    } else if (key == "refcount_bits") {
      auto n = parse_number(key, value);
      if (!n) return n.error();
      // qemu reads the width through an int.
      const int32_t bits = static_cast<int32_t>(static_cast<uint32_t>(*n));
      if (bits <= 0 || bits > 64 || (bits & (bits - 1)))
        return refused("Refcount width must be a power of two and may not exceed 64 bits");
      uint32_t order = 0;
      while ((1 << order) < bits) ++order;
      p.refcount_order = order;
    } else if (among(kEncryptAmend, key)) {
      if (key == "encrypt.keyslot" || key == "encrypt.iter-time")
        if (Error e = luks_check_amend_number(key, value)) return e;
      p.encryption = true;
    } else if (key.starts_with(kLuksAmendSecretPrefix)) {
      continue;  // the secrets the encrypt.* options name (luks.h)
    } else if (among(kCreateOnly, key)) {
      return refused("Invalid parameter '" + key + "'\nThis option is only supported for image creation");
    } else {
      return refused("Invalid parameter '" + key + "'");
    }
  }
  if (auto c = options.find("compat"); c != options.end() && p.version == 0u)
    return refused("Unknown compatibility level " + c->second);
  return p;
}

Error QcowImage::amend(const AmendOptions& opts) {
  if (hdr_.version == 1)
    return unsupported("Format driver 'qcow' does not support option amendment");
  if (Error e = refuse_write("amend")) return e;
  if (writes_active_ || flushing_)
    return Error(Errc::busy, "amend while requests are in flight").image(path_);
  auto plan = parse_amend_options(opts.options);
  if (!plan) return plan.error();
  const AmendPlan& p = *plan;
  const uint32_t old_version = hdr_.version;
  const uint32_t new_version = p.version.value_or(old_version);
  if (p.encryption) {
    if (hdr_.crypt_method == kCryptNone) return refused("Can't amend encryption options - encryption not present");
    if (hdr_.crypt_method != kCryptLuks) return unsupported("Only LUKS encryption options can be amended");
  }
  if (p.data_file && !hdr_.data_file)
    return refused("data-file can only be set for images that use an external data file");
  const bool raw_now = hdr_.autoclear_features & kAutoclearDataFileRaw;
  if (p.data_file_raw && *p.data_file_raw && !raw_now)
    return refused("data-file-raw cannot be set on existing images");
  forget_packing();
  if (Error e = FlushRequest::run_sync(*this)) return e;
  // One progress bar over the long operations (QEMU's helper: a projection of the rest).
  AmendProgress progress(opts.progress, (new_version != old_version) + p.encryption +
                                            (p.refcount_order && *p.refcount_order != hdr_.refcount_order));

  // Upgrade first: the later steps may need compat=1.1.
  if (new_version > old_version) {
    progress.next();
    if (Error e = upgrade()) return e;
    progress.report(1, 1);
  }
  // The key slots, in the LUKS header's clusters (their size fixed at create, as in QEMU).
  if (p.encryption) {
    progress.next();
    if (!luks_) return Error(Errc::corrupt, "the LUKS header could not be read").image(path_);
    const LuksArea area{*file_, hdr_.crypto_header_offset, hdr_.crypto_header_length, path_};
    if (Error e = luks_amend(area, *luks_, luks_master_key_.span(), opts.options, "encrypt.", opts.force))
      return e;
    progress.report(1, 1);
  }
  if (p.refcount_order && *p.refcount_order != hdr_.refcount_order) {
    if (new_version < 3 && *p.refcount_order != 4)
      return refused("Refcount widths other than 16 bits require compatibility level 1.1 or above "
                     "(use compat=1.1 or greater)");
    progress.next();
    if (Error e = change_refcount_order(*p.refcount_order, progress)) return e;
  }
  // The data file name and data-file-raw (cleared first: it excludes a backing file).
  if (p.data_file || p.data_file_raw) {
    if (p.data_file_raw) {
      if (*p.data_file_raw) hdr_.autoclear_features |= kAutoclearDataFileRaw;
      else hdr_.autoclear_features &= ~kAutoclearDataFileRaw;
    }
    if (p.data_file) hdr_.data_file = p.data_file->empty() ? std::nullopt : p.data_file;
    if (Error e = write_header_now()) return e;
  }
  if ((p.backing_file || p.backing_format) &&
      (p.backing_file != hdr_.backing_file || p.backing_format != hdr_.backing_format))
    return refused("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
  const bool lazy_now = hdr_.compatible_features & kCompatLazyRefcounts;
  if (p.lazy_refcounts && *p.lazy_refcounts != lazy_now) {
    if (*p.lazy_refcounts && new_version < 3)
      return refused("Lazy refcounts only supported with compatibility level 1.1 and above "
                     "(use compat=1.1 or greater)");
    // Turning them off: the refcounts are exact already (a read-write open of a dirty
    // image rebuilds them, image_open.cpp), so only the bit changes.
    if (*p.lazy_refcounts) hdr_.compatible_features |= kCompatLazyRefcounts;
    else hdr_.compatible_features &= ~kCompatLazyRefcounts;
    if (Error e = write_header_now()) return e;
  }
  if (p.size && *p.size) {
    if (hdr_.version == 2 && !snapshots_.empty()) return unsupported("Can't resize a v2 image which has snapshots");
    if (Error e = resize(round_up_to_sector(*p.size))) return e;
  }
  // Downgrade last, once the features it cannot keep are gone.
  if (new_version < old_version) {
    progress.next();
    if (Error e = downgrade(progress)) return e;
  }
  return {};
}

// The header with the fields changed in memory, written and flushed now.
Error QcowImage::write_header_now() {
  if (Error e = write_metadata_header()) return e;
  if (Error e = file_->flush()) return e.wrap("flush").image(path_);
  return {};
}

// compat=0.10 -> 1.1: v3 needs each snapshot's extra data (VM state size, disk size), which
// the table rewrite adds; then the header, with QEMU's v3 fields and feature names.
Error QcowImage::upgrade() {
  const bool rewrite = std::any_of(snapshots_.begin(), snapshots_.end(),
                                   [](const Snapshot& s) { return s.extra_data.size() < 16; });
  Header before = hdr_;
  hdr_.version = 3;
  hdr_.header_length = 0;  // QEMU's full v3 header
  hdr_.refcount_order = 4;
  hdr_.feature_names = qemu_feature_names(3, hdr_.cluster_bits);
  if (rewrite) {
    for (auto& s : snapshots_)
      if (!s.disk_size) s.disk_size = before.size;
    if (Error e = write_snapshot_table(snapshots_)) {
      hdr_ = before;
      return e;
    }
  }
  if (Error e = write_header_now()) {
    hdr_ = before;
    return e;
  }
  layout_ = Layout::from(hdr_);
  return {};
}

}  // namespace vd::qcow
