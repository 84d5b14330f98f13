//! Intel 8254 programmable interval timer (placeholder; being written).
