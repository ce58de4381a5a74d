//! Reverse-mode autodiff (being written).
