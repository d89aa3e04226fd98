// What qemu-img 7.2 knows of each format's creation options before the format sees them:
// their names, types and defaults, in the order its "Formatting ..." line prints them. It
// refuses an unknown name or a value of the wrong type before anything is created, and
// prints the line with the defaults filled in. The file options (nocow, extent_size_hint)
// belong to the file under every format; vdimg applies them itself (create_file_options).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vd/backend.h"

namespace vdimg {

// The -o pairs in the order given, checked against `format`'s options: the first unknown
// name or badly typed value fails in qemu-img's words ("Invalid parameter 'foo'",
// "Parameter 'lazy_refcounts' expects 'on' or 'off'"). Formats vdimg has no table for
// (plugins) pass unchecked.
// Used by create, convert and measure.
vd::Error check_option_types(const std::string& format,
                             const std::vector<std::pair<std::string, std::string>>& given);

// "Formatting 'IMAGE', fmt=FMT k=v ..." as qemu-img prints it: every option set or with a
// default, in the format's order; numbers and sizes as their values, the rest as given
// (commas doubled in strings).
std::string formatting_line(const std::string& image, const std::string& format, const vd::CreateOptions& opts);

// The options of the file itself, taken out of `opts.options` (no format reads them).
struct FileCreateOptions {
  bool nocow = false;
  std::optional<uint64_t> extent_size_hint;  // as given; qemu's default is 1 MiB
};
// qcow's preallocation is the file's too (qemu accepts off, falloc and full and changes nothing).
vd::Result<FileCreateOptions> take_file_options(const std::string& format, vd::CreateOptions& opts);

// Creates IMAGE's file empty and gives it the file options before the format writes it (a
// nocow flag only takes on an empty file). Failures to set them are not errors, as in
// qemu: an extent size hint given explicitly warns. True when it made the file: if the
// format then refuses, undo_image_file removes it (qemu leaves nothing behind a refusal).
bool prepare_image_file(const std::string& path, const FileCreateOptions& file);
void undo_image_file(const std::string& path, bool made);
// qemu's file layer refuses preallocation=metadata (raw, qcow) only after making the file,
// which then stays: such a refusal keeps it.
bool refusal_keeps_file(const std::string& format, const vd::CreateOptions& opts);

// Why creating IMAGE failed, in qemu-img's words (which it prints after "IMAGE: "): a file
// that could not be made is "Could not create 'PATH': <strerror>".
std::string creation_failure(const std::string& image, const vd::Error& e);

}  // namespace vdimg
