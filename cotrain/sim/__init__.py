"""A discrete-event simulator of a Jetson AGX Orin co-running an inference service and training.

Why a simulator: a real 10-minute run on an Orin explores one configuration; the controllers have
to be compared over thousands of power modes and knob settings, deterministically, on machines
without a GPU. The modules, each with one job:

- `modes`: the Orin mode space (online cores x CPU x GPU x EMC frequency) from the board tables;
- `fixtures`: reading the real Orin telemetry the model is calibrated against;
- `model`: execution time and power as functions of the mode (and the analytic steady state);
- `calibration`: fitting the model to the published and measured points, with hold-out error;
- `scenario`: what to simulate (`SimScenario`), and mapping an experiment config onto it;
- `engine`: the discrete-event engine (arrivals, dynamic batcher, GPU time-slicing, the gate);
- `runner`: a real controller (`Policy`) driven in simulated time, and `sim_static`;
- `policies`: the registered controllers as the simulated board builds them (`adaptive` gets
  the board's mode table, with clocks, as a Jetson would give it);
- `search`: model-free searches over static configurations (gradient-style, random) and the
  oracle's local refinement over the full mode space;
- `bench`: `cotrain bench --platform sim` (controllers, the two searches, the oracle);
- `ratestep`: a step in the arrival rate, and how fast a controller re-converges;
- `ccgrid23`: the check that the simulator reproduces CCGrid'23's findings (docs/references.md).
"""
