"""Reports derived from stored cells: statistics (`statistics`), headline metrics and chance lines
(`headline`), paired comparisons over seeds (`paired`), tables (`tables`), figures
(`plots`), per-attack conclusions (`conclusions`), the md/html writers (`html`) and the document
(`document`); `python -m arena.report DIR` (`cli`) rebuilds them without rerunning anything.

The top layer below `matrix`: may import `run` (the store, plug-ins) and everything under it. Order
inside: statistics <- headline, paired <- tables <- plots, conclusions, html <- document <- cli.
"""
