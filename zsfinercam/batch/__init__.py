"""`zsfinercam batch`: many images, resumable, on the local engine or on Ray."""
