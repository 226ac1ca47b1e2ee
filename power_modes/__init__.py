"""Jetson power modes as pure code and data. Installed as `cotrain.power_modes`.

- `nvpmodel.py`: `parse_nvpmodel(text)` reads an nvpmodel.conf into typed modes (online cores,
  CPU/GPU/EMC caps in MHz, GPU power-gating masks and the reboot rule); `modes_json` is its JSON view.
- `boards.py` and `boards/*.yaml`: per-module mode tables for the Orin family, generated from
  NVIDIA's real files (`python -m cotrain.power_modes.boards --regenerate`); `load_board`, `list_boards`.
- `policy.py` and `policy-example.yaml`: which modes a controller may use (`PowerModePolicy`,
  `load_power_policy`, `check_policy_against`, `allowed_modes`).

Nothing here touches the device; the Jetson platform applies modes.
"""
