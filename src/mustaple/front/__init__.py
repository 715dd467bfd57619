"""What the commands show and do for a person, beyond reading their options.

The tables of `status` and `prime` (`status`), the progress shown while `fetch` and `prime`
wait (`progress`), the work of `init` (`init`) and the demo's scenes (`demo`). The rule: no
click here. A command in `mustaple.cli` reads its options and calls one of these, so the
command stays thin and the work can be called (and tested) without a command line.
"""
