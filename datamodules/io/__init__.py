"""Reading and writing files: CF lat-lon netCDF in (errors name the file and variable), slab-wise
netCDF out, atomic writes, whole-file conversion to the icosahedron, and prediction files."""
