// The index page: each form opens /watch/ROOM or /publish/ROOM.

for (const form of document.querySelectorAll('form[data-page]')) {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const room = form.elements.room.value.trim();
    if (room) location.assign(`/${form.dataset.page}/${encodeURIComponent(room)}`);
  });
}
