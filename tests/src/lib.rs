//! Holds no library code: the tests live in `tests/tests/`.
