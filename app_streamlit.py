"""IMRS in the browser: ``streamlit run app_streamlit.py`` (or ``make app``). The page is ``imrs.app``."""

from imrs.app import main
from imrs.app.widgets import shown_errors

with shown_errors("IMRS"):  # last line of defence: anything missed inside is still one readable line
    main()
