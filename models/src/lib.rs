//! Models built on the op set.
