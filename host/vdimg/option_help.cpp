// `-o help` as qemu-img 7.2 prints it for create and convert: the format's creation options
// sorted by name, "NAME=<TYPE>" padded to a column, then " - " and the description. Without
// a file name it says "Supported FMT options:" and that the protocol may add some; with one,
// "Supported options:" and the file protocol's options merged in (the format's own entry
// wins where both have one).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

struct HelpLine {
  const char* name;
  const char* type;
  const char* text;
};

const char kBool[] = "bool (on/off)";

const std::vector<HelpLine> kFile = {
    {"extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"},
    {"nocow", kBool, "Turn off copy-on-write (valid only on btrfs)"},
    {"preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)"},
    {"size", "size", "Virtual disk size"},
};

const std::vector<HelpLine> kQcow2 = {
    {"backing_file", "str", "File name of a base image"},
    {"backing_fmt", "str", "Image format of the base image"},
    {"cluster_size", "size", "qcow2 cluster size"},
    {"compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"},
    {"compression_type", "str", "Compression method used for image cluster compression"},
    {"data_file", "str", "File name of an external data file"},
    {"data_file_raw", kBool, "The external data file must stay valid as a raw image"},
    {"encrypt.cipher-alg", "str", "Name of encryption cipher algorithm"},
    {"encrypt.cipher-mode", "str", "Name of encryption cipher mode"},
    {"encrypt.format", "str", "Encrypt the image, format choices: 'aes', 'luks'"},
    {"encrypt.hash-alg", "str", "Name of encryption hash algorithm"},
    {"encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"},
    {"encrypt.ivgen-alg", "str", "Name of IV generator algorithm"},
    {"encrypt.ivgen-hash-alg", "str", "Name of IV generator hash algorithm"},
    {"encrypt.key-secret", "str", "ID of secret providing qcow AES key or LUKS passphrase"},
    {"encryption", kBool, "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"},
    {"extended_l2", kBool, "Extended L2 tables"},
    {"lazy_refcounts", kBool, "Postpone refcount updates"},
    {"preallocation", "str", "Preallocation mode (allowed values: off, metadata, falloc, full)"},
    {"refcount_bits", "num", "Width of a reference count entry in bits"},
    {"size", "size", "Virtual disk size"},
};

const std::vector<HelpLine> kQcow = {
    {"backing_file", "str", "File name of a base image"},
    {"backing_fmt", "str", "Format of the backing image"},
    {"encrypt.format", "str", "Encrypt the image, format choices: 'aes'"},
    {"encrypt.key-secret", "str", "ID of the secret that provides the AES encryption key"},
    {"encryption", kBool, "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"},
    {"size", "size", "Virtual disk size"},
};

const std::vector<HelpLine> kLuks = {
    {"cipher-alg", "str", "Name of encryption cipher algorithm"},
    {"cipher-mode", "str", "Name of encryption cipher mode"},
    {"hash-alg", "str", "Name of encryption hash algorithm"},
    {"iter-time", "num", "Time to spend in PBKDF in milliseconds"},
    {"ivgen-alg", "str", "Name of IV generator algorithm"},
    {"ivgen-hash-alg", "str", "Name of IV generator hash algorithm"},
    {"key-secret", "str", "ID of the secret that provides the keyslot passphrase"},
    {"size", "size", "Virtual disk size"},
};

const std::vector<HelpLine> kRaw = {{"size", "size", "Virtual disk size"}};

const std::vector<HelpLine>* qemu_lines(std::string_view format) {
  if (format == "qcow2") return &kQcow2;
  if (format == "qcow") return &kQcow;
  if (format == "luks") return &kLuks;
  if (format == "raw") return &kRaw;
  return nullptr;
}

// vd's own list, for a format qemu-img does not have (a plugin's).
int print_vd_options(const vd::Backend& backend) {
  std::cout << "Supported options:\n";
  for (const auto& o : backend.create_options()) {
    std::string name = o.name;
    if (name.size() < 24) name.resize(24, ' ');
    std::cout << "  " << name << " - " << o.help << "\n";
  }
  return kExitOk;
}

}  // namespace

int print_option_help(const vd::Backend& backend, bool with_filename) {
  const auto* own = qemu_lines(backend.name());
  if (!own) return print_vd_options(backend);
  std::vector<HelpLine> lines = *own;
  if (with_filename) {
    for (const auto& f : kFile) {
      const bool have = std::any_of(lines.begin(), lines.end(),
                                    [&](const HelpLine& l) { return std::string(l.name) == f.name; });
      if (!have) lines.push_back(f);
    }
  }
  std::sort(lines.begin(), lines.end(),
            [](const HelpLine& a, const HelpLine& b) { return std::string(a.name) < std::string(b.name); });
  if (with_filename) std::cout << "Supported options:\n";
  else std::cout << "Supported " << backend.name() << " options:\n";
  for (const auto& l : lines) {
    std::string head = "  " + std::string(l.name) + "=<" + l.type + ">";
    if (head.size() < 24) head.resize(24, ' ');
    std::cout << head << " - " << l.text << "\n";
  }
  if (!with_filename)
    std::cout << "\nThe protocol level may support further options.\n"
                 "Specify the target filename to include those options.\n";
  return kExitOk;
}

}  // namespace vdimg
