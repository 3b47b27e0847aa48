"""Training with trl + peft: specs, inputs, resumable runs, SFT, DPO, adapted models, the
SFT/DPO examples built from BIG5-CHAT."""
