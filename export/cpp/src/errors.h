// The two kinds of failure eas_generate reports: bad input from the user (a file, a flag, a
// manifest value; exit status 2) and a backend failing at run time (exit status 1). Both carry a
// one-line message that names the file or value.
#pragma once

#include <stdexcept>
#include <string>

namespace eas {

struct InputError : std::runtime_error {
    explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

struct RuntimeFailure : std::runtime_error {
    explicit RuntimeFailure(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace eas
