"""Small numpy/opencv numerics of arrays: no sessions, no files."""
