// Flagged images stay blurred until clicked (reports get shared); a second click blurs them again.
document.querySelectorAll(".tile.flagged").forEach(function (tile) {
  tile.addEventListener("click", function () { tile.classList.toggle("revealed"); });
});
