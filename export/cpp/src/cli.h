// Flag parsing shared by the app's programs: "--name value" pairs and bare switches; anything
// else is an InputError naming the flag.
#pragma once

#include <map>
#include <set>
#include <string>

namespace eas {

struct Flags {
    std::map<std::string, std::string> values;
    std::set<std::string> switches;

    bool has(const std::string& name) const { return values.count(name) > 0; }
    std::string get(const std::string& name, const std::string& fallback) const;
    std::string required(const std::string& name) const;
    int integer(const std::string& name, int fallback, int min) const;
};

Flags parse_flags(int argc, char** argv, const std::set<std::string>& with_value, const std::set<std::string>& switches);

// main() around a program body: InputError -> "error: ..." and exit 2, other failures -> exit 1
int run_main(const char* usage, int argc, char** argv, int (*body)(int, char**));

}  // namespace eas
