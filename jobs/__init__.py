"""Jobs that run many trainings and read their folders: sweeps, ColD Fusion rounds, the
model-recycling evaluation, reports and tables, the demo, and the one launcher of
`recast train` processes on Ray that they share."""
