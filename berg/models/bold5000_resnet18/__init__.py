"""fmri-bold5000-resnet18: img2fmri 1.0's published model (MIT), converted and served by berg."""
