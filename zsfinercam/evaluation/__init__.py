"""`zsfinercam eval`: localisation metrics on labelled parts and the synthetic benchmark."""
