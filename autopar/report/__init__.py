"""Plan reports: a self-contained HTML page (``autopar.report.html.write_report``) with matplotlib pictures
(``autopar.report.figures``) and the predicted pipeline schedule (``autopar.report.schedule``)."""
