"""Running experiments: the TOML config (`config`), planning and running groups of cells (`runner`,
with `model_cache` and `artifacts`; `grants` decides what each attack is granted and builds its
view), executors (`executors`; `workers` holds what the local
processes and Ray share; `ray`), the append-only cell store (`store`), progress and plug-ins.

May import every layer below (attacks, defenses, protocol, he, scoring, data, models, vocabulary),
never `report`. Order inside: config, store, progress, plugins, model_cache, artifacts, grants <- runner
<- workers <- ray <- executors.
"""
