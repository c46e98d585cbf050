"use strict";
if (new URLSearchParams(location.search).has("refused")) {
  document.getElementById("refused").hidden = false;
}
