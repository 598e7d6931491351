//! Placeholder while the driver loop is written.
