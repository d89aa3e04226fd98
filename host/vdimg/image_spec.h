// An image named as qemu-img names it beyond a plain file name: a `json:{...}` pseudo-filename
// or an --image-opts string ("driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0").
// Both become one option dictionary (dotted keys, nested JSON objects flattened as qemu's
// qdict_flatten does) and then an ImageSpec: the file, its format and the ids of the secrets
// that hold the keys. open_disk (common.cpp) is the one user; the commands never parse these.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vd/error.h"

namespace vdimg {

struct ImageSpec {
  std::string filename;                           // file.filename
  std::optional<std::string> format;              // driver; probed when absent
  std::optional<std::string> key_secret;          // encrypt.key-secret (qcow, qcow2) / key-secret (luks)
  std::string key_option;                         // which of the two names key_secret came as
  std::optional<std::string> backing_key_secret;  // backing.encrypt.key-secret / backing.key-secret
  bool force_share = false;                       // force-share=on
  std::optional<std::string> backing_option;      // the first backing.* key given
  bool no_backing = false;                        // "backing": null (or backing= in --image-opts)
  std::optional<bool> cache_direct, cache_no_flush;  // cache.direct, cache.no-flush (also file.*)
  bool no_lock = false;                           // file.locking=off
  std::vector<std::string> warnings;              // qemu's deprecation warnings, to print
  // A key neither qemu's format nor vd knows: refused once the format is known, in qemu's
  // words ("Block format 'qcow2' does not support the option 'foo'").
  std::optional<std::string> unknown_key;
};

// True for a "json:{...}" pseudo-filename.
bool is_json_name(const std::string& name);

// The dotted-key dictionary of a json: name (`image_opts` false) or of an --image-opts string,
// in the order given. Errors carry qemu's words, without the "Could not open 'X': " lead.
vd::Result<std::vector<std::pair<std::string, std::string>>> image_dictionary(const std::string& text,
                                                                            bool image_opts);

// The dictionary checked key by key against what vd honours (unknown keys are refused with
// qemu's "Block format 'qcow2' does not support the option 'foo'").
vd::Result<ImageSpec> parse_image_spec(const std::string& text, bool image_opts);

// The name qemu-img prints for the opened image (bdrv_refresh_filename): the file name, or,
// when a key-secret (a "strong" option) was given, json:{...} with qemu's key order.
std::string spec_display_name(const ImageSpec& spec, const std::string& format);

}  // namespace vdimg
