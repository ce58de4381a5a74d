//! Weight I/O: safetensors (memory-mapped reads, atomic writes) and the official PyTorch
//! `torch.save` zip checkpoints through a restricted unpickler.
