// vdimg: qemu-img's commands over the vd backends. Dispatches to one function per
// subcommand (cmd_*.cpp); each parses its own options and returns the process exit code.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "host/vdimg/vdimg.h"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(const vdimg::Argv&);
  const char* synopsis;
};

const Subcommand kCommands[] = {
    {"amend", vdimg::cmd_amend, "amend [-f FMT] [-p] [-q] [--force] -o OPTIONS IMAGE"},
    {"bench", vdimg::cmd_bench,
     "bench [-c N] [-d DEPTH] [-f FMT] [-n] [-o OFFSET] [--pattern=BYTE] [-q] [-s SIZE] "
     "[-S STEP] [-t CACHE] [-i AIO] [-w] [-U] IMAGE"},
    {"bitmap", vdimg::cmd_bitmap,
     "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... "
     "[-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT] IMAGE BITMAP"},
    {"check", vdimg::cmd_check, "check [-f FMT] [-r leaks|all] [--output=human|json] [-q] IMAGE"},
    {"commit", vdimg::cmd_commit, "commit [-f FMT] [-b BASE] [-d] [-p] [-q] [-r RATE] IMAGE"},
    {"compare", vdimg::cmd_compare, "compare [-f FMT] [-F FMT] [-s] [-p] [-q] IMAGE1 IMAGE2"},
    {"convert", vdimg::cmd_convert,
     "convert [-f FMT] -O FMT [-o OPTS] [-c] [-C] [-p] [-n] [--target-is-zero] [-W] [-m N] "
     "[-S SPARSE_SIZE] [-r RATE] [--salvage] [-B BACKING [-F FMT]] [-l SNAPSHOT] "
     "[--passphrase-file FILE] SRC [SRC2...] DST"},
    {"create", vdimg::cmd_create,
     "create -f FMT [-o OPTS] [-b BACKING [-F BACKING_FMT]] [-u] [-q] IMAGE [SIZE]"},
    {"dd", vdimg::cmd_dd,
     "dd [-U] [-f FMT] [-O FMT] [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT"},
    {"info", vdimg::cmd_info,
     "info [-f FMT] [--output=human|json] [--backing-chain] [-U] IMAGE"},
    {"io", vdimg::cmd_io,
     "io [-f FMT] [-r] [-q] [--passphrase-file FILE] -c CMD [-c CMD]... IMAGE"},
    {"map", vdimg::cmd_map, "map [-f FMT] [--output=human|json] [-U] IMAGE"},
    {"measure", vdimg::cmd_measure,
     "measure [--output=human|json] [-O FMT] [-o OPTS] [--size N | [-f FMT] [-l SNAPSHOT] IMAGE]"},
    {"rebase", vdimg::cmd_rebase, "rebase [-f FMT] [-u] [-p] [-q] -b BACKING [-F FMT] IMAGE"},
    {"resize", vdimg::cmd_resize, "resize [-f FMT] [--shrink] [-q] IMAGE [+|-]SIZE"},
    {"snapshot", vdimg::cmd_snapshot, "snapshot [-l] [-q] IMAGE"},
};

int usage(std::ostream& out, int code) {
  out << "usage: vdimg [--help | --version] [--plugin PATH]... COMMAND [command options]\n"
         "vd disk image utility (qemu-img's commands over the vd backends)\n\n"
         "Global options (before COMMAND):\n"
         "  --plugin PATH   load the backend plugin PATH (a .so file, or a folder of them)\n"
         "                  before the command runs; repeatable\n"
         "Environment:\n"
         "  VD_PLUGIN_PATH  colon-separated plugin files or folders, loaded before --plugin\n\n"
         "Commands:\n";
  for (const auto& c : kCommands) out << "  " << c.synopsis << "\n";
  out << "\nSizes and offsets take the suffixes k, M, G, T, P, E (powers of 1024).\n"
         "Run 'vdimg COMMAND --help' for a command's options.\n";
  return code;
}

// The plugins loaded for this run, checked against the built-in formats (a plugin may not
// replace one). Lives until exit: the backends of every Context point into its libraries.
vd::Registry& loaded() {
  static vd::Registry registry = vd::Registry::builtin();
  return registry;
}

}  // namespace

vd::Registry vdimg::run_registry() {
  vd::Registry r = vd::Registry::builtin();
  for (const vd::Backend* b : loaded().backends()) {
    if (!r.find(b->name())) (void)r.add(b);
  }
  return r;
}

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // Global options come before the command.
  std::vector<std::string> plugins;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--plugin") {
      if (i + 1 >= args.size()) return vdimg::fail("option '--plugin' needs a PATH");
      plugins.push_back(args[++i]);
    } else if (a.rfind("--plugin=", 0) == 0) {
      plugins.push_back(a.substr(std::strlen("--plugin=")));
    } else {
      break;
    }
  }
  args.erase(args.begin(), args.begin() + static_cast<std::ptrdiff_t>(i));
  if (args.empty()) {
    usage(std::cerr, 1);
    return 1;
  }
  const std::string& first = args[0];
  if (first == "--help" || first == "-h") return usage(std::cout, 0);
  if (first == "--version" || first == "-V") {
    std::cout << "vdimg version 0.1.0\n";
    return 0;
  }

  if (const char* list = std::getenv("VD_PLUGIN_PATH")) {
    if (vd::Error e = loaded().load_plugins(list)) {
      return vdimg::fail("VD_PLUGIN_PATH: " + e.message());
    }
  }
  for (const std::string& p : plugins) {
    if (vd::Error e = loaded().load_plugins(p)) {
      return vdimg::fail(e);  // names the plugin
    }
  }

  for (const auto& c : kCommands) {
    if (first == c.name) return c.run(vdimg::Argv(args.begin() + 1, args.end()));
  }
  return vdimg::fail("Command not found: " + first);
}
