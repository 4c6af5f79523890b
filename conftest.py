"""Repository-wide pytest configuration.

The mechclaims plugin itself is loaded through its ``pytest11`` entry point
(installed with the package); this file only keeps data folders out of collection.
"""

collect_ignore = ["fixtures", "reports"]
