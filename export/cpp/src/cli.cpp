#include "cli.h"

#include <iostream>

#include "errors.h"

namespace eas {

std::string Flags::get(const std::string& name, const std::string& fallback) const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
}

std::string Flags::required(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) throw InputError(name + " is required");
    return it->second;
}

int Flags::integer(const std::string& name, int fallback, int min) const {
    if (!has(name)) return fallback;
    const std::string text = values.at(name);
    size_t used = 0;
    int value = 0;
    try {
        value = std::stoi(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size() || value < min)
        throw InputError(name + " " + text + ": expected an integer of at least " + std::to_string(min));
    return value;
}

Flags parse_flags(int argc, char** argv, const std::set<std::string>& with_value, const std::set<std::string>& switches) {
    Flags flags;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (switches.count(arg)) {
            flags.switches.insert(arg);
        } else if (with_value.count(arg)) {
            if (i + 1 >= argc) throw InputError(arg + " needs a value");
            flags.values[arg] = argv[++i];
        } else {
            throw InputError("unknown argument " + arg);
        }
    }
    return flags;
}

int run_main(const char* usage, int argc, char** argv, int (*body)(int, char**)) {
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
            std::cout << usage << "\n";
            return 0;
        }
    try {
        return body(argc, argv);
    } catch (const InputError& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}

}  // namespace eas
