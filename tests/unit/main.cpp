// The doctest runner for every unit test. meson registers one test per area
// (doctest test suite), each running this binary with --test-suite=<area>.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
