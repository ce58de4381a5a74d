//! Property tests: every op's fast path against its plain reference, on shapes with 1s and
//! odd sizes, non-contiguous views and broadcasting.

mod support;

mod adaln;
mod attention;
mod bitwise;
mod conv;
mod devices;
mod elementwise;
mod index;
mod matmul;
mod norm;
mod reduce;
mod resize;
mod rope;
mod softmax;
mod vq;
