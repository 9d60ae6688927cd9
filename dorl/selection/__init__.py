"""How dorl's defaults are chosen: simulated labs (:mod:`~dorl.selection.labs`) and the
label-free rule over them (:mod:`~dorl.selection.rule`), on source labels only."""
