"""`zsfinercam bench`: timing the fast path against a plain forward and a reference."""
