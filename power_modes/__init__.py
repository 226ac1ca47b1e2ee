"""Power modes: nvpmodel.conf parsing, board tables and power-mode policy configs.

Installed as `cotrain.power_modes`.

Filled in by the platform layer; the package exists now so the layout and packaging are final.
"""
