"""Research code: what builds, trains and compares, never what serves a forget. The core (everything in
:mod:`fiun_hub` outside this package) never imports it; the CLI's ``demo``, the benchmarks and the tests do.

- :mod:`.scenarios`: real inheritance networks (FL, DDPL, IL, TL) of tiny timm models trained on digits, pushed
  into a hub, with everything needed to redo any model;
- :mod:`.training`: the small deterministic training loop and FedAvg that make every edge of those networks;
- :mod:`.baselines`: retrain (the gold standard), fine-tune and gradient ascent, to compare FIUn with;
- :mod:`.relearn`: the relearn test (fine-tune a copy on retained data, measure the forget again);
- :mod:`.deep_forget`: the prototype of a deeper forget (issue 16, not a default);
- :mod:`.demo`: ``fiun-hub demo``, a scenario built, forgotten and checked end to end.
"""
