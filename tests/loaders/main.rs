//! Weight loading: `.pth` and `.safetensors` give identical, memory-mapped tensors; safetensors
//! writes round-trip and are atomic; hostile files of either format are errors, never panics
//! or out-of-bounds reads.

mod support;

mod equivalence;
mod fuzz;
mod hostile_pth;
mod hostile_safetensors;
mod pth_features;
mod safetensors_write;
