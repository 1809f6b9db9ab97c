"""vitlab.peft."""
