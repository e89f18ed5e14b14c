-- Headless test of the cursor notification (intarsia/didMoveCursor, lua/intarsia/cursor.lua), run by
-- tests/test_editors_nvim.py through minimal_init.lua against test/recording_server.py, a stub LSP server that
-- negotiates UTF-16 positions and writes every message it gets to cfg.record_file (one JSON line each). The
-- script moves the cursor with keys in normal and insert mode, switches buffers, and checks what the server
-- received: one notification a pause (cfg.cursor_notify_ms) after the last move, for the buffer's URI, the version
-- Neovim's client synced, and the cursor in UTF-16 code units. Checks go to cfg.result_file (see harness.lua).

local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local cfg, api, intarsia = H.cfg, H.api, H.intarsia
local check, wait_for, feed, line, sleep, mode = H.check, H.wait_for, H.feed, H.line, H.sleep, H.mode
local cursor = require('intarsia.cursor')

local METHOD = 'intarsia/didMoveCursor'
local delay = cfg.cursor_notify_ms

--- Every message the server got so far, in order: {method, params, id?}.
local function received()
  local out = {}
  local f = io.open(cfg.record_file, 'r')
  if not f then
    return out
  end
  for l in f:lines() do
    local ok, msg = pcall(vim.json.decode, l)
    if ok then -- the last line may be half written
      out[#out + 1] = msg
    end
  end
  f:close()
  return out
end

local function notes()
  local out = {}
  for i, m in ipairs(received()) do
    if m.method == METHOD then
      m.index = i
      out[#out + 1] = m
    end
  end
  return out
end

--- Wait for notification number n + 1 and return it with the time (uv.now) it was seen.
local function next_note(n, what)
  local got = wait_for(what, function()
    return notes()[n + 1]
  end, 10000)
  return got, vim.uv.now()
end

local function params(uri, version, l, c)
  return { textDocument = { uri = uri, version = version }, position = { line = l, character = c } }
end

-- When each CursorMoved / CursorMovedI fired (the debouncer's input).
local moved_at = {}
api.nvim_create_autocmd({ 'CursorMoved', 'CursorMovedI' }, {
  callback = function()
    moved_at[#moved_at + 1] = vim.uv.now()
  end,
})

H.run(function()
  vim.cmd.edit(vim.fn.fnameescape(cfg.workspace .. '/main.py'))
  local client = wait_for('the Intarsia client to attach', function()
    local c = intarsia.client()
    return c and c.initialized and c
  end, 20000)
  local bufnr = api.nvim_get_current_buf()
  local uri = vim.uri_from_bufnr(bufnr)
  check('the client negotiated UTF-16 positions with the stub', client.offset_encoding == 'utf-16',
    client.offset_encoding)
  check('setup() passed cursor_notify_ms on', cursor.config.delay_ms == delay, cursor.config.delay_ms)

  -- 1. The buffer was entered before the client attached: one notification at the cursor, didOpen's version.
  local first = next_note(0, 'the first notification')
  local opened
  for _, m in ipairs(received()) do
    if m.method == 'textDocument/didOpen' and m.params.textDocument.uri == uri then
      opened = opened or m
    end
  end
  check('after attaching: the buffer\'s uri, the version of didOpen, the cursor (0, 0)',
    opened and vim.deep_equal(first.params, params(uri, opened.params.textDocument.version, 0, 0)),
    { first = first, opened = opened })

  -- 2. Moves less than a pause apart: one notification, a pause after the last, for where the cursor is then;
  --    the character counts UTF-16 code units (the line is `s = "😀漢"; z = 1`).
  sleep(delay * 2)
  local n = #notes()
  local since = #moved_at + 1
  for _, keys in ipairs({ 'j', 'f;', 'l', 'l' }) do
    feed(keys)
    sleep(20)
  end
  local note, seen = next_note(n, 'the notification after the moves')
  check('the cursor is on the `z` after the emoji (byte column 15)',
    vim.deep_equal(api.nvim_win_get_cursor(0), { 2, 15 }), api.nvim_win_get_cursor(0))
  check('the notification is for the last place: line 1, UTF-16 character 11',
    vim.deep_equal(note.params, params(uri, vim.lsp.util.buf_versions[bufnr], 1, 11)), note.params)
  local gaps = {}
  for i = since + 1, #moved_at do
    gaps[#gaps + 1] = moved_at[i] - moved_at[i - 1]
  end
  check('the moves fired CursorMoved, each less than a pause after the one before',
    #moved_at - since + 1 >= 4 and math.max(unpack(gaps)) < delay, { gaps = gaps, delay = delay })
  check('it came no sooner than a pause after the last move (trailing debounce)',
    seen - moved_at[#moved_at] >= delay - 2, { seen = seen, last_move = moved_at[#moved_at], delay = delay })
  sleep(delay * 3)
  check('one notification for the four moves', #notes() == n + 1, notes())

  -- 3. Away and back within a pause: the same params are not sent again.
  feed('h')
  sleep(20)
  check('a notification waits while the pause runs', cursor.pending(), cursor.pending())
  feed('l')
  sleep(delay * 3)
  check('back at the same place: nothing new', #notes() == n + 1 and not cursor.pending(), notes())

  -- 4. Typing in insert mode (CursorMovedI): the version of the change, sent (didChange) before the notification.
  n = #notes()
  feed('A + 2')
  wait_for('the typed text', function()
    return line(2) == 's = "😀漢"; z = 1 + 2'
  end, 3000)
  note = next_note(n, 'the notification after typing')
  sleep(delay * 3)
  note = notes()[#notes()]
  local version = vim.lsp.util.buf_versions[bufnr]
  check('in insert mode: the end of the line, UTF-16 character 20, the buffer\'s current version',
    vim.deep_equal(note.params, params(uri, version, 1, 20)) and version > opened.params.textDocument.version,
    { note = note.params, version = version })
  local synced
  for i = 1, note.index - 1 do
    local m = received()[i]
    if m.method == 'textDocument/didChange' and m.params.textDocument.uri == uri then
      synced = m.params.textDocument.version
    end
  end
  check('the server got the didChange of that version before the notification', synced == version,
    { synced = synced, version = version })
  feed('<Esc>')
  wait_for('normal mode', function()
    return mode() == 'n'
  end, 3000)
  sleep(delay * 3)

  -- 5. BufEnter: another file, then back.
  n = #notes()
  vim.cmd.edit(vim.fn.fnameescape(cfg.workspace .. '/other.py'))
  local other = api.nvim_get_current_buf()
  local other_uri = vim.uri_from_bufnr(other)
  note = next_note(n, 'the notification for other.py')
  check('entering other.py: its uri, version and cursor', vim.deep_equal(note.params,
    params(other_uri, vim.lsp.util.buf_versions[other], 0, 0)), note.params)
  sleep(delay * 3)
  n = #notes()
  vim.cmd.buffer(bufnr)
  note = next_note(n, 'the notification for main.py again')
  local row, col = unpack(api.nvim_win_get_cursor(0))
  check('back in main.py: where its cursor is (line 1, before the last `2`: UTF-16 character 19)',
    row == 2 and col == #'s = "😀漢"; z = 1 + ' and vim.deep_equal(note.params, params(uri, version, 1, 19)),
    { note = note.params, cursor = { row, col } })
  sleep(delay * 3)

  -- 6. A buffer without the Intarsia client: nothing.
  n = #notes()
  vim.cmd('enew')
  api.nvim_buf_set_lines(0, 0, -1, false, { 'a', 'b', 'c' })
  feed('jj')
  sleep(delay * 3)
  check('a buffer the client is not attached to gets no notification',
    #vim.lsp.get_clients({ bufnr = 0 }) == 0 and #notes() == n, notes()[#notes()])
  vim.cmd.buffer(bufnr)
  sleep(delay * 3)

  -- 7. cursor_notify_ms = 0 (what setup() sets): nothing, and the pending one is dropped.
  n = #notes()
  feed('0')
  sleep(20)
  check('a move starts the pause', cursor.pending(), cursor.pending())
  cursor.config.delay_ms = 0
  feed('$')
  sleep(delay * 3)
  check('disabled: nothing is sent and nothing waits', #notes() == n and not cursor.pending(), notes()[#notes()])
  cursor.config.delay_ms = delay
  feed('0')
  note = next_note(n, 'the notification once enabled again')
  check('enabled again: the start of the line', vim.deep_equal(note.params, params(uri, version, 1, 0)), note.params)
end)
