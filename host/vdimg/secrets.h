// qemu-img's way of giving an image a key when it is created: the key lives in a secret
// object (--object secret,id=ID,data=VALUE or file=PATH) and an option names it
// (-o encrypt.key-secret=ID for QCOW2, -o key-secret=ID for LUKS). vdimg also takes
// --passphrase-file FILE for the new image of `create`.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "host/vdimg/args.h"
#include "vd/error.h"

namespace vdimg {

// The secret objects of the command line by id (data= or file=, format=raw or base64), in
// qemu's words when wrong. Other --object kinds are refused: a qemu type by name (vdimg has
// no use for it), others as qemu refuses them; encrypted secrets (keyid, iv) are refused.
vd::Result<std::map<std::string, std::string>> secret_objects(const Args& args);

// The passphrase a new image gets: the secret its key-secret option names, else the content
// of `passphrase_file` when given. Errors when the option names a secret nobody defined.
vd::Result<std::optional<std::string>> creation_passphrase(const Args& args,
                                                           const std::map<std::string, std::string>& options,
                                                           const std::optional<std::string>& passphrase_file);

}  // namespace vdimg
