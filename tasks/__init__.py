"""Units of work, one package per stage, in pipeline order: :mod:`.build` (names -> plan -> shards ->
manifest), :mod:`.train` and :mod:`.audit` (both read the manifest), :mod:`.evaluate` (heads on the test split);
:mod:`.enhance` applies a trained head to any images. Flows and the CLI import from the stage packages."""
