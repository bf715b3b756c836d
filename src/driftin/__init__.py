"""driftin: DDPM vs drifting generators on one UNet, as a reproducible DVC pipeline."""
