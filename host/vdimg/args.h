// Option parsing shared by the vdimg subcommands, in getopt_long's manner: options may come
// before or after the positional arguments (permutation), "--" ends the options, short
// options group ("-pc") and take their value attached or as the next word ("-ofoo", "-o foo"),
// long options take "--name=value" or "--name value". -h/--help is always understood.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vd/error.h"

namespace vdimg {

struct OptionSpec {
  char short_name;        // 0 for a long-only option
  const char* long_name;  // nullptr for a short-only option
  bool takes_value;
};

class Args {
 public:
  // (key, value) in command-line order; the key is the long name if the option has one,
  // otherwise the short letter as a one-character string.
  std::vector<std::pair<std::string, std::string>> options;
  std::vector<std::string> positional;
  bool help = false;

  bool has(const std::string& key) const;
  std::optional<std::string> last(const std::string& key) const;  // the last one given wins
  std::vector<std::string> all(const std::string& key) const;
};

// Parses argv (without the program and subcommand names).
vd::Result<Args> parse_args(const std::vector<std::string>& argv,
                            const std::vector<OptionSpec>& specs);

// Splits a qemu-img -o list ("a=1,b=2"; ",," escapes a comma) into pairs, merging repeated
// -o lists; a key without '=' maps to "on" (qemu's boolean shorthand), except "help"/"?".
// qemu-img's check of each -o list as it takes it (create, convert, amend, measure): not
// empty, no leading comma, no odd run of trailing commas, else "Invalid option list: LIST".
vd::Error check_option_list(const std::string& list);
vd::Error check_option_lists(const Args& args);
vd::Result<std::vector<std::pair<std::string, std::string>>> parse_option_list(
    const std::vector<std::string>& lists);

}  // namespace vdimg
