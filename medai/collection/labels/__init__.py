"""Label sheets: read a site's RIS export, match rows to catalogued studies, report conflicts."""
