"""The dashboard's words in Vietnamese (the default) and English.

``tr(lang, key, **params)`` fills ``{name}`` placeholders. Texts the CLI already has in both
languages (``"vi / en"``, e.g. ``gateway.reports.STATUS_LABELS``) are split with :func:`pick`.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")
DEFAULT: Lang = "vi"

TEXT: dict[str, tuple[str, str]] = {
    "app.title": ("Bảng điều hành điểm danh", "Attendance operations"),
    "lang.vi": ("Tiếng Việt", "Tiếng Việt"),
    "lang.en": ("English", "English"),
    "nav.overview": ("Tổng quan", "Overview"),
    "nav.attendance": ("Điểm danh", "Attendance"),
    "nav.readers": ("Đầu đọc", "Readers"),
    "nav.unknown": ("Thẻ lạ", "Unknown cards"),
    "nav.quarantine": ("Cách ly", "Quarantine"),
    "nav.outbox": ("Hàng đợi gửi", "Outboxes"),
    "role.viewer": ("người xem", "viewer"),
    "role.operator": ("vận hành", "operator"),
    "role.admin": ("quản trị", "administrator"),
    "anonymous": ("chỉ xem, máy này", "view only, this computer"),
    "login.title": ("Đăng nhập", "Log in"),
    "login.username": ("Tên đăng nhập", "User name"),
    "login.password": ("Mật khẩu", "Password"),
    "login.failed": ("Sai tên đăng nhập hoặc mật khẩu.", "Wrong user name or password."),
    "login.locked": ("Quá nhiều lần đăng nhập sai. Thử lại sau {minutes} phút.",
                     "Too many failed logins. Try again in {minutes} min."),
    "login.expired": ("Phiên làm việc đã hết hạn, vui lòng đăng nhập lại.",
                      "Your session has expired; please log in again."),
    "login.form_expired": ("Biểu mẫu đã hết hạn, vui lòng thử lại.",
                           "The form has expired; please try again."),
    "logout": ("Đăng xuất", "Log out"),
    "error.forbidden": ("Bạn không có quyền làm việc này ({role} trở lên).",
                        "You are not allowed to do this ({role} or above)."),
    "error.csrf": ("Biểu mẫu không hợp lệ hoặc đã hết hạn: hãy tải lại trang.",
                   "The form is invalid or has expired: reload the page."),
    "error.login_needed": ("Cần đăng nhập để thay đổi dữ liệu.", "Log in to change anything."),
    "error.not_found": ("Không tìm thấy trang.", "Page not found."),
    "error.bad_request": ("Yêu cầu không hợp lệ: {detail}", "Bad request: {detail}"),
    "error.title": ("Lỗi", "Error"),
    "back": ("Quay lại", "Back"),
    "empty": ("Không có dữ liệu.", "Nothing to show."),
    # overview
    "overview.readers_online": ("Đầu đọc trực tuyến", "Readers online"),
    "overview.scans_today": ("Lượt quẹt hôm nay", "Taps today"),
    "overview.unknown_open": ("Thẻ lạ chưa xem", "Unknown cards to review"),
    "overview.quarantined": ("Cách ly 24 giờ", "Quarantined, 24 h"),
    "overview.queued": ("Chờ trên đầu đọc", "Waiting on readers"),
    "overview.parked": ("Mục tạm gác", "Parked items"),
    "live.title": ("Lượt quẹt trực tiếp", "Live taps"),
    "live.connected": ("Đang nhận trực tiếp", "Live"),
    "live.disconnected": ("Mất kết nối, đang thử lại…", "Disconnected, retrying…"),
    "chart.arrivals": ("Học sinh đến mỗi phút, buổi {session}", "Arrivals per minute, {session}"),
    "chart.arrivals_none": ("Hôm nay chưa có học sinh nào đến.", "No arrivals yet today."),
    "chart.late_after": ("muộn sau {time}", "late after {time}"),
    "chart.rates": ("Tỉ lệ đi học theo lớp, {weeks} tuần gần đây",
                    "Attendance rate per class, last {weeks} weeks"),
    "chart.rates_note": ("(có mặt + đi muộn) / (có mặt + đi muộn + vắng), các buổi đã chốt; tuần "
                         "ghi theo ngày thứ Hai",
                         "(present + late) / (present + late + absent), closed sessions; weeks "
                         "by their Monday"),
    "kind.check_in": ("Đến", "Arrived"),
    "kind.late": ("Đến muộn", "Late"),
    "kind.check_out": ("Ra về", "Left"),
    "kind.absent": ("Vắng", "Absent"),
    "kind.unknown_card": ("Thẻ lạ", "Unknown card"),
    "kind.tap": ("Quẹt", "Tap"),
    "col.time": ("Giờ", "Time"),
    "col.gate": ("Cổng", "Gate"),
    "col.student": ("Học sinh", "Student"),
    "col.class": ("Lớp", "Class"),
    "col.event": ("Sự kiện", "Event"),
    "col.card": ("Thẻ", "Card"),
    # attendance
    "attendance.title": ("Điểm danh ngày {date}", "Attendance on {date}"),
    "attendance.session": ("Buổi {name}", "Session {name}"),
    "attendance.closed": ("đã chốt", "closed"),
    "attendance.open": ("đang mở", "open"),
    "attendance.no_sessions": ("Không có buổi học trong ngày này.", "No sessions on this day."),
    "attendance.no_class": ("(chưa xếp lớp)", "(no class)"),
    "attendance.total": ("Tổng", "Total"),
    "col.total": ("Sĩ số", "Total"),
    "col.present": ("Có mặt", "Present"),
    "col.late": ("Đi muộn", "Late"),
    "col.absent": ("Vắng", "Absent"),
    "col.not_yet": ("Chưa đến", "Not yet"),
    "date": ("Ngày", "Date"),
    "show": ("Xem", "Show"),
    "export.title": ("Xuất dữ liệu điểm danh", "Export attendance"),
    "export.from": ("Từ ngày", "From"),
    "export.to": ("Đến ngày", "To"),
    "export.csv": ("Xuất CSV", "Export CSV"),
    "export.xlsx": ("Xuất Excel", "Export Excel"),
    "export.bad_range": ("Khoảng ngày không hợp lệ (tối đa {days} ngày).",
                         "Invalid date range (at most {days} days)."),
    "class.title": ("Lớp {name} — {date}", "Class {name} — {date}"),
    "class.late": ("Đi muộn", "Late"),
    "class.absent": ("Vắng", "Absent"),
    "class.all": ("Cả lớp", "Whole class"),
    "col.student_id": ("Mã HS", "Student ID"),
    "col.name": ("Họ và tên", "Name"),
    "col.status": ("Trạng thái", "Status"),
    "col.in": ("Giờ vào", "In"),
    "col.out": ("Giờ ra", "Out"),
    "none": ("Không có.", "None."),
    # readers
    "readers.title": ("Đầu đọc", "Readers"),
    "col.reader": ("Đầu đọc", "Reader"),
    "col.online": ("Trực tuyến", "Online"),
    "online.yes": ("có", "yes"),
    "online.no": ("KHÔNG", "NO"),
    "online.revoked": ("đã thu hồi", "revoked"),
    "col.last_seen": ("Lần cuối", "Last seen"),
    "col.heartbeat": ("Nhịp tim cuối", "Last heartbeat"),
    "col.queue": ("Hàng đợi", "Queue"),
    "col.oldest": ("Cũ nhất chưa gửi", "Oldest unsent"),
    "col.dropped": ("Bị bỏ", "Dropped"),
    "col.clock": ("Đồng hồ", "Clock"),
    "col.faults": ("Lỗi", "Faults"),
    "col.keys": ("Khóa", "Keys"),
    "col.actions": ("Thao tác", "Actions"),
    "ago": ("{age} trước", "{age} ago"),
    "readers.rotate": ("Đổi khóa", "Rotate key"),
    "readers.finish": ("Thu hồi khóa cũ", "Revoke retired keys"),
    "readers.revoke": ("Thu hồi đầu đọc", "Revoke reader"),
    "readers.confirm": ("chắc chắn", "I am sure"),
    "readers.rotated": ("Khóa mới của đầu đọc {reader} (thế hệ {key_id}). Chỉ hiện MỘT lần: "
                        "nạp ngay vào đầu đọc.",
                        "New key of reader {reader} (generation {key_id}). Shown ONCE: provision "
                        "the reader now."),
    "readers.key": ("Khóa HMAC (hex)", "HMAC key (hex)"),
    "readers.mqtt_user": ("Tài khoản MQTT", "MQTT user"),
    "readers.mqtt_password": ("Mật khẩu MQTT", "MQTT password"),
    "readers.broker_hint": ("Sau đó, với quyền root: attendance-gateway readers broker-config "
                            "--owner mosquitto rồi systemctl reload mosquitto.",
                            "Then, as root: attendance-gateway readers broker-config --owner "
                            "mosquitto, then systemctl reload mosquitto."),
    "readers.finished": ("Đầu đọc {reader}: đã thu hồi {count} khóa cũ.",
                         "Reader {reader}: {count} retired keys revoked."),
    "readers.revoked": ("Đã thu hồi đầu đọc {reader}.", "Reader {reader} revoked."),
    "readers.refused": ("Không thực hiện được: {detail}", "Refused: {detail}"),
    "readers.confirm_needed": ("Hãy đánh dấu ô xác nhận.", "Tick the confirmation box."),
    # unknown cards
    "unknown.title": ("Thẻ lạ", "Unknown cards"),
    "unknown.show_all": ("Hiện cả thẻ đã xem", "Show acknowledged cards too"),
    "unknown.open_only": ("Chỉ thẻ chưa xem", "Only cards to review"),
    "col.first": ("Lần đầu", "First seen"),
    "col.last": ("Lần cuối", "Last seen"),
    "col.times": ("Số lần", "Times"),
    "col.ack": ("Đã xem", "Reviewed"),
    "unknown.ack": ("Đánh dấu đã xem", "Acknowledge"),
    "unknown.assign": ("Gán cho học sinh", "Assign to student"),
    "unknown.student_id": ("Mã định danh học sinh (10 số)", "Ministry student ID (10 digits)"),
    "unknown.acked": ("Đã đánh dấu thẻ {card} là đã xem.", "Card {card} acknowledged."),
    "unknown.assigned": ("Đã gán thẻ {card} (số {number}) cho học sinh {student}.",
                         "Card {card} (number {number}) assigned to student {student}."),
    "unknown.already": ("Thẻ {number} đã thuộc học sinh {student}, không có gì thay đổi.",
                        "Card {number} already belongs to student {student}; nothing changed."),
    "unknown.no_student": ("Không có học sinh mã {student} trong danh sách.",
                           "No student with ID {student} on the roster."),
    "unknown.inactive": ("Học sinh {student} đã nghỉ học (không còn trong danh sách).",
                         "Student {student} has left (inactive on the roster)."),
    "unknown.no_card": ("Không có thẻ lạ {card}.", "No unknown card {card}."),
    "unknown.refused": ("Không gán được thẻ: {reason}", "The card was not assigned: {reason}"),
    "yes": ("có", "yes"),
    "no": ("không", "no"),
    # quarantine
    "quarantine.title": ("Dữ liệu bị cách ly", "Quarantined input"),
    "col.transport": ("Đường truyền", "Transport"),
    "col.reason": ("Lý do", "Reason"),
    "col.detail": ("Chi tiết", "Detail"),
    "col.size": ("Byte", "Bytes"),
    # outboxes
    "outbox.title": ("Hàng đợi gửi", "Outboxes"),
    "outbox.targets": ("Gửi lên hệ thống cấp trên", "Upstream targets"),
    "outbox.channels": ("Kênh thông báo phụ huynh", "Parent notification channels"),
    "outbox.none_targets": ("Chưa cấu hình đích nào ([[forward]]).",
                            "No upstream targets configured ([[forward]])."),
    "outbox.none_channels": ("Chưa cấu hình kênh nào ([[notify.channel]]).",
                             "No notification channels configured ([[notify.channel]])."),
    "col.target": ("Tên", "Name"),
    "col.type": ("Loại", "Type"),
    "col.pending": ("Chờ gửi", "Pending"),
    "col.parked": ("Tạm gác", "Parked"),
    "col.delivered": ("Đã gửi hôm nay", "Delivered today"),
    "col.oldest_pending": ("Chờ lâu nhất", "Oldest pending"),
    "col.breaker": ("Ngắt mạch", "Breaker"),
    "col.state": ("Trạng thái", "State"),
    "col.last_error": ("Lỗi gần nhất", "Last error"),
    "breaker.closed": ("đóng", "closed"),
    "breaker.open": ("mở", "open"),
    "breaker.half_open": ("đang thử", "half-open"),
    "state.running": ("đang gửi", "running"),
    "state.paused": ("tạm dừng", "paused"),
    "state.disabled": ("tắt", "disabled"),
    "state.not_configured": ("không còn cấu hình", "not configured"),
    "outbox.parked_items": ("Mục tạm gác: {name}", "Parked items: {name}"),
    "col.item": ("Mục", "Item"),
    "col.kind": ("Loại", "Kind"),
    "col.session": ("Buổi", "Session"),
    "col.tries": ("Số lần", "Tries"),
    "col.since": ("Từ", "Since"),
    "outbox.retry": ("Gửi lại", "Retry"),
    "outbox.retry_all": ("Gửi lại tất cả", "Retry all"),
    "outbox.retried": ("{name}: {count} mục đã về hàng chờ, cổng sẽ gửi lại trong giây lát.",
                       "{name}: {count} items back to pending; the gateway sends them within a "
                       "second."),
    "outbox.unknown_target": ("Không có đích hoặc kênh {name} trong cấu hình.",
                              "{name} is not a configured target or channel."),
    "outbox.not_parked": ("Không gửi lại được: {detail}", "Not retried: {detail}"),
}


def tr(lang: Lang, key: str, **params: object) -> str:
    vi, en = TEXT[key]
    text = vi if lang == "vi" else en
    return text.format(**params) if params else text


# The usual names of [[attendance.session]] tables; a school's own names are shown as written.
SESSION_NAMES = {"morning": ("sáng", "morning"), "afternoon": ("chiều", "afternoon"),
                 "evening": ("tối", "evening")}


def session_name(lang: Lang, name: str) -> str:
    """A session's name in ``lang`` when it is one of the usual English ones."""
    names = SESSION_NAMES.get(name.lower())
    return name if names is None else names[0] if lang == "vi" else names[1]


def pick(lang: Lang, both: str) -> str:
    """One language of a ``"vi / en"`` text."""
    vi, sep, en = both.partition(" / ")
    return (vi if lang == "vi" else en) if sep else both


def lang_of(value: str | None) -> Lang:
    for lang in LANGS:
        if value == lang:
            return lang
    return DEFAULT
