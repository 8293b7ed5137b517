"""The ClimateNet file layout shared by the reader, the datamodule, prediction and the generator."""

from __future__ import annotations

VARIABLES: dict[str, tuple[str, str]] = {
    "TMQ": ("kg m-2", "Total (vertically integrated) precipitable water"),
    "U850": ("m/s", "Zonal wind at 850 mbar pressure surface"),
    "V850": ("m/s", "Meridional wind at 850 mbar pressure surface"),
    "UBOT": ("m/s", "Lowest model level zonal wind"),
    "VBOT": ("m/s", "Lowest model level meridional wind"),
    "QREFHT": ("kg/kg", "Reference height humidity"),
    "PS": ("Pa", "Surface pressure"),
    "PSL": ("Pa", "Sea level pressure"),
    "T200": ("K", "Temperature at 200 mbar pressure surface"),
    "T500": ("K", "Temperature at 500 mbar pressure surface"),
    "PRECT": ("m/s", "Total (convective and large-scale) precipitation rate (liq + ice)"),
    "TS": ("K", "Surface temperature (radiative)"),
    "TREFHT": ("K", "Reference height temperature"),
    "Z1000": ("m", "Geopotential Z at 1000 mbar pressure surface"),
    "Z200": ("m", "Geopotential Z at 200 mbar pressure surface"),
    "ZBOT": ("m", "Lowest model level height"),
}
"""The 16 ClimateNet variables in file order: name -> (units, long_name)."""

